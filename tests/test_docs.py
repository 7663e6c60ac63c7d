"""README and docs/: links resolve, cheap commands run, generated tables equal their JSON, the
repository layout is the tree's."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def fenced_blocks(text: str, language: str | None = None) -> list[str]:
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)
    return [body for lang, body in blocks if language is None or lang == language]


def prose(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def test_readme_is_a_landing_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, len(lines)
    first_screen = "\n".join(lines[:60])
    assert "python train.py -c smoke.yml" in first_screen and "python -m pytest -q" in first_screen
    assert (ROOT / "docs").is_dir() and len(PAGES) > 8


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    text = prose(page.read_text())
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    relative = [link for link in links if not re.match(r"[a-z]+:", link) and not link.startswith("#")]
    assert relative or page.name != "README.md"
    for link in relative:
        target = (page.parent / link.split("#")[0]).resolve()
        assert target.exists(), f"{page.name}: {link}"


def test_every_page_starts_with_what_it_is_for():
    for page in PAGES[1:]:
        title, blank, purpose = page.read_text().splitlines()[:3]
        assert title.startswith("# ") and not blank and len(purpose) > 20, page.name


def _commands() -> list[tuple[str, str, list[str]]]:
    """Each fenced bash command that is cheap (``--help``, ``--print-config``), with the folder
    that the block's ``cd`` moved to."""
    found = []
    for page in PAGES:
        for block in fenced_blocks(page.read_text(), "bash"):
            cwd = "."
            for line in block.splitlines():
                line = line.split("  #")[0].strip()
                if line.startswith("cd "):
                    cwd = line.split()[1]
                    line = line.split("&&", 1)[1].strip() if "&&" in line else ""
                if line.startswith("python") and ("--help" in line or "--print-config" in line):
                    found.append((page.name, cwd, shlex.split(line)))
    return found


COMMANDS = _commands()


@pytest.mark.parametrize("page,cwd,argv", COMMANDS, ids=[" ".join(c[2])[:60] for c in COMMANDS])
def test_cheap_commands_in_the_docs_run(page, cwd, argv):
    out = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT / cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{page}: {' '.join(argv)}\n{out.stderr[-2000:]}"
    assert out.stdout.strip()


def test_the_docs_show_cheap_commands():
    assert any("--print-config" in argv for _, _, argv in COMMANDS)
    assert any("--help" in argv for _, _, argv in COMMANDS)


def test_generated_tables_equal_their_json():
    """Tables that a tool writes are the tool's output from the JSON in docs/benchmarks/."""
    from tools import benchmark
    from tools.energy import markdown_table
    docs = {p.name: p.read_text() for p in PAGES}
    cpu = [str(ROOT / "docs" / "benchmarks" / f"cpu_{f}_cifar_4_384.json") for f in ("qkformer", "spikingformer",
                                                                                    "sglformer")]
    assert benchmark.markdown_table(cpu) in docs["performance.md"]
    rows = json.loads((ROOT / "docs" / "benchmarks" / "energy_published.json").read_text())["rows"]
    assert markdown_table(rows) in docs["energy.md"]


def test_a_published_energy_row_is_what_the_tool_measures_now():
    """One row of energy_published.json measured again (the smallest model, one 224 px sample):
    the stored JSON is not stale."""
    import torch
    import models
    from engine.energy import EnergyMeter
    from tools.energy import PUBLISHED, published_row
    stored = {r["model"]: r for r in json.loads((ROOT / "docs" / "benchmarks" /
                                                  "energy_published.json").read_text())["rows"]}
    name = "spikformer_8_384"
    model = models.build(name).eval()
    with torch.no_grad(), EnergyMeter(model) as meter:
        model(torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)))
    row = published_row(name, meter.summary(), PUBLISHED[name])
    for key in ("macs", "count_input_macs", "memory_traffic_mj", "ann_mj", "weights_mj"):
        assert row[key] == pytest.approx(stored[name][key], rel=1e-9), key


def test_model_zoo_parameter_counts_are_the_models():
    import timm
    import torch
    import models
    table = (ROOT / "README.md").read_text().split("## Model zoo")[1].split("\n## ")[0]
    rows = re.findall(r"^\| `(\w+)` \| ([\d.]+) \|", table, flags=re.M)
    assert [name for name, _ in rows] == list(models.VARIANTS)
    for name, millions in rows:
        with torch.device("meta"):
            n = sum(p.numel() for p in timm.create_model(name).parameters())
        assert f"{n / 1e6:.2f}" == millions, name
    for config in re.findall(r"`((?:imagenet|cifar10|cifar100|cifar10-dvs|dvs128-gesture)/[\w.]+\.yml)`", table):
        assert (ROOT / config).is_file(), config


def _layout() -> list[tuple[list[str], str]]:
    """(names, description) of each entry of docs/developer.md's layout block; nested entries
    come as ``models/neuron.py``."""
    text = (ROOT / "docs" / "developer.md").read_text().split("## Repository layout")[1]
    block = fenced_blocks(text)[0]
    entries, parent = [], ""
    for line in block.splitlines():
        nested = re.match(r"^  (\S+)\s{2,}(.*)", line)
        if line and not line[0].isspace():
            names = re.split(r"\s{2,}", line, maxsplit=1)[0].split()
            entries.append((names, line))
            parent = names[-1] if names[-1].endswith("/") else ""
        elif nested and parent:
            entries.append(([parent + nested.group(1)], nested.group(2)))
        elif entries:
            entries[-1] = (entries[-1][0], entries[-1][1] + " " + line.strip())
    return entries


def test_repository_layout_is_the_tree():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    files, dirs = set(tracked), {str(d) + "/" for f in tracked for d in Path(f).parents if str(d) != "."}
    entries = _layout()
    names = [n for ns, _ in entries for n in ns]
    for name in names:       # everything listed exists
        assert (name in dirs) if name.endswith("/") else (name in files), name
    top = {f.split("/")[0] for f in tracked if "/" in f and not f.startswith(".")}
    covered = {n.split("/")[0] for n in names}
    assert top <= covered, top - covered
    for package in ("models", "tools"):     # every module is listed
        modules = {f for f in tracked if re.fullmatch(rf"{package}/\w+\.py", f) and not f.endswith("__init__.py")}
        assert modules <= set(names), modules - set(names)
    engine = " ".join(d for ns, d in entries if "engine/" in ns)
    for module in {Path(f).parts[1].removesuffix(".py") for f in tracked        # modules and packages
                   if f.startswith("engine/") and not f.endswith("engine/__init__.py")}:
        assert re.search(rf"\b{module}\b", engine), module
