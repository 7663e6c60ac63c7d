"""Module layering: evaluation and the tools never reach the training module; low-level engine
modules take only the exception types from the engine (read statically, every import counted)."""
import ast

import pytest

from conftest import ROOT


def imports(module: str) -> set[str]:
    """Modules of this repository that ``module`` imports anywhere in its file (lazy imports too)."""
    path = ROOT / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = ROOT / module.replace(".", "/") / "__init__.py"
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    local = {m for m in found if m.split(".")[0] in ("engine", "models", "tools")}
    return {m for m in local if (ROOT / (m.replace(".", "/") + ".py")).exists()
            or (ROOT / m.replace(".", "/") / "__init__.py").exists()}


def reachable(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += imports(m)
    return seen


@pytest.mark.parametrize("module", ["engine.tester", "engine.energy", "engine.factories", "tools.energy",
                                    "tools.benchmark", "tools.convert_checkpoint"])
def test_evaluation_and_tools_do_not_import_training(module):
    assert "engine.trainer" not in reachable(module)


@pytest.mark.parametrize("module", ["engine.distributed", "engine.optim", "engine.checkpoint"])
def test_low_level_modules_take_only_exception_types_from_the_engine(module):
    # (engine.watchdog, which names a stopped process for engine.distributed, imports nothing of the engine)
    # ("engine" itself: the package of a ``from . import watchdog``)
    assert {m for m in imports(module) if m.startswith("engine")} - {"engine"} <= {"engine.errors", "engine.watchdog"}
    assert not {m for m in imports("engine.watchdog") if m.startswith("engine")}


def test_the_energy_counter_imports_no_model_class():
    # (engine.firing finds LIF neurons by their class; the attention modules declare their own counts;
    # models.memory's announcements say how each layer's input was made)
    assert {m for m in imports("engine.energy") if m.startswith("models")} == {"models.memory"}


def test_no_import_cycle_in_models():
    """No module of models/ reaches itself through the others (lazy imports counted; the package's
    __init__, which imports them all, left out)."""
    modules = sorted(f"models.{p.stem}" for p in (ROOT / "models").glob("*.py") if p.stem != "__init__")

    def reach(start: str) -> set[str]:
        seen, todo = set(), [m for m in imports(start) if m in modules]
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo += [n for n in imports(m) if n in modules]
        return seen
    cycles = [m for m in modules if m in reach(m)]
    assert cycles == []
