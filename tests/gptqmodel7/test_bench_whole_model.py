"""The whole-model benchmark's 7.7.0 child (benchmarks/bench_quantize.py --gptqmodel7): "stock" quantizes with
GPTQModel 7.7.0 itself, the fair configurations through fair_gptq_v7, and the record names the 7.7.0 stack."""
import json

import pytest

import fair_gptq_v7
from benchmarks import bench_quantize as bench


@pytest.mark.slow
def test_child_runs_stock_770_and_fair_gptq_v7(tiny_mistral_dir, stereoset_dev_path, monkeypatch, capsys):
    calls = []
    real = fair_gptq_v7.quantize

    def counted(model, calibration, **kwargs):
        calls.append(model.quantize_config.fair_accumulate)
        return real(model, calibration, **kwargs)

    monkeypatch.setattr(fair_gptq_v7, "quantize", counted)
    results = {}
    for config in ("stock", "fair-sd"):
        assert bench.main(["--gptqmodel7", "--config", config, "--model", str(tiny_mistral_dir), "--pairs", "4",
                           "--stereoset", str(stereoset_dev_path), "--group-size", "32", "--device", "cpu"]) == 0
        line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("BENCH_RESULT "))
        results[config] = json.loads(line.removeprefix("BENCH_RESULT "))
    assert calls == ["sum-difference"]  # stock never went through fair_gptq_v7
    for config, result in results.items():
        assert result["config"] == config and result["n_pairs"] == 4 and result["seconds"] > 0
        assert result["versions"]["gptqmodel"] == "7.7.0"


def test_the_770_children_run_in_the_770_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("VENV7", str(tmp_path / "none"))
    with pytest.raises(SystemExit, match="needs the 7.7.0 environment"):
        bench.child_python(True)
    (tmp_path / "v" / "bin").mkdir(parents=True)
    (tmp_path / "v" / "bin" / "python").write_text("")
    monkeypatch.setenv("VENV7", str(tmp_path / "v"))
    assert bench.child_python(True) == str(tmp_path / "v" / "bin" / "python")
