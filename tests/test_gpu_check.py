"""tools.gpu_check: its CPU dry run (every part on tiny sizes, Triton in its interpreter) and its guards."""
import json
import time

import pytest

from tools import gpu_check


def test_dry_run_runs_every_part_and_writes_the_report(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    report = gpu_check.main(["--out", str(tmp_path), "--device", "cpu", "--tiny", "--families", "spikingformer_8_384"])
    parts = report["parts"]
    assert list(parts) == ["versions", "step_census", "backends", "lif_speed", "train_spikingformer_8_384", "best",
                           "pytest_gpu", "train_runs"]
    assert {k: p["status"] for k, p in parts.items()} == dict.fromkeys(parts, "ok"), \
        {k: p.get("error") for k, p in parts.items()}
    backends = parts["backends"]["result"]
    assert {r["backend"] for r in backends["lif"]} == {"fused", "triton"} and backends["skipped"]["cupy"] == "needs CUDA"
    assert all(r["spikes_equal"] and r["v_equal"] and r["grads_equal"] for r in backends["lif"])
    assert all(r["logits_equal"] and r["grads_equal"] for r in backends["models"])
    census = parts["step_census"]["result"]["models"]["qkformer_cifar_4_384@32px/b2"]
    assert census["triton+bf16"]["aten_syncs_per_step"] == 1.0           # the update's loss read, nothing else
    assert census["triton+bf16"]["launch_ops_per_step"] > 100
    assert census["triton+bf16+graph"]["status"] == "skipped"
    speed = parts["lif_speed"]["result"]
    assert {(r["T"], r["backend"]) for r in speed["rows"] if r.get("ms", 0) > 0} == \
        {(T, b) for T in (2, 4) for b in ("torch", "fused", "triton")}
    setups = parts["train_spikingformer_8_384"]["result"]["setups"]
    assert setups["reference"]["step_ms"] > 0 and setups["reference"]["time_vs_reference"] == 1.0
    assert setups["triton"]["bit_equal"] and setups["triton"]["deviation"] == {"logits": 0.0, "grads": 0.0}
    assert setups["triton+bf16"]["status"] == "ok" and not setups["triton+bf16"]["bit_equal"]
    assert setups["cupy+fp16+standard"] == {"status": "skipped", "reason": "needs CUDA"}
    best = parts["best"]["result"]
    assert best["setups"]["triton+cl"]["status"] == "ok" and best["summary"]["best_bit_equal_fp32"].startswith("triton")
    assert parts["pytest_gpu"]["result"]["returncode"] == 0
    run = parts["train_runs"]["result"]["spikingformer_8_384"]
    assert run["returncode"] == 0 and run["metrics"][-1]["val_samples"] == 128
    assert json.loads((tmp_path / "report.json").read_text())["parts"].keys() == parts.keys()
    assert "| triton (float32) | 8 | 8 | 8 | 8 | 0.00e+00  |" in (tmp_path / "report.md").read_text()


def test_a_failing_part_is_recorded_and_the_next_part_runs(tmp_path, monkeypatch):
    def broken(ctx):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    monkeypatch.setattr(gpu_check, "part_backends", broken)
    report = gpu_check.main(["--out", str(tmp_path), "--device", "cpu", "--tiny", "--parts", "backends", "versions"])
    assert report["parts"]["backends"]["status"] == "failed"
    assert "illegal memory access" in report["parts"]["backends"]["error"]
    assert report["parts"]["versions"]["status"] == "ok"
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["parts"]["backends"]["status"] == "failed"


def test_time_limit_interrupts_and_nests():
    with pytest.raises(gpu_check.PartTimeout):
        with gpu_check.time_limit(0.2):
            time.sleep(3)
    start = time.monotonic()
    with pytest.raises(gpu_check.PartTimeout):
        with gpu_check.time_limit(0.5):          # the outer limit survives an inner one
            with gpu_check.time_limit(10):
                pass
            time.sleep(3)
    assert time.monotonic() - start < 2


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--out", str(tmp_path), "--device", "cpu", "--parts", "everything"])
    assert exit_info.value.code == 2 and "error: unknown part(s) everything" in capsys.readouterr().err
    if not gpu_check.torch.cuda.is_available():
        with pytest.raises(SystemExit):
            gpu_check.main(["--out", str(tmp_path)])
        assert "error: --device cuda but torch sees no GPU" in capsys.readouterr().err


def test_benchmark_setups_name_the_triton_backend_and_gpu_options():
    from tools.benchmark import parse_setup
    setup = parse_setup("triton+fp16+cl+cudagraphs")
    assert (setup["backend"], setup["precision"], setup["cl"], setup["cudagraphs"], setup["compile"]) == \
        ("triton", "fp16", True, True, False)
    assert all(parse_setup(s) for s in gpu_check.MAIN_SETUPS + gpu_check.CANDIDATES)
