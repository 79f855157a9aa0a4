"""The experiment driver's --quick path on the tiny OPT: every variant quantized, evaluated, summarised."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("reproduce", ROOT / "sanity-check" / "reproduce.py")
reproduce = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reproduce)


def test_variant_table_quick_and_full():
    quick = reproduce.variant_table("all", 0.1, reproduce.QUICK_SWEEP, None, quick=True)
    assert list(quick) == ["fp", "gptq", "fair-all", "ctrl-unrelated", "ctrl-shuffled"]
    full = reproduce.variant_table("all", 0.1, reproduce.SWEEP, "pairs.json", quick=False)
    assert {"fair-lower", "fair-upper", "fair-lower-upper", "fair-all-a0.01", "fair-all-a0.3", "ctrl-file"} <= set(full)
    assert full["ctrl-shuffled"][-2:] == ["--pairs", "shuffled"] and full["gptq"] == ["--alpha", "0"]
    controls = reproduce.variant_table("controls", 0.1, reproduce.SWEEP, None, quick=False)
    assert list(controls) == ["fp", "gptq", "fair-all", "ctrl-unrelated", "ctrl-shuffled"]


@pytest.mark.slow
def test_quick_run_on_tiny_opt_writes_every_report(tiny_opt_dir, stereoset_dev_path, tmp_path, capsys):
    out = tmp_path / "quick"
    argv = ["--suite", "controls", "--quick", "--model", str(tiny_opt_dir), "--out", str(out), "--pairs", "4",
            "--group-size", "32", "--max-items", "12", "--max-windows", "2", "--seqlen", "64", "--device", "cpu",
            "--bootstrap", "50", "--stereoset", str(stereoset_dev_path)]
    assert reproduce.main(argv) == 0
    for name in ("gptq", "fair-all", "ctrl-unrelated", "ctrl-shuffled"):
        run = json.loads((out / "models" / name / "fair_gptq_run.json").read_text())
        assert run["calibration"]["n_pairs"] == 4 and run["calibration"]["split"]["part"] == "calib"
    assert json.loads((out / "models" / "ctrl-shuffled" / "fair_gptq_run.json").read_text())["calibration"]["mode"] == "shuffled"
    for report_file in ("results.json", "results.csv", "report.md"):
        assert (out / "eval" / report_file).is_file()
    assert list((out / "eval").glob("*.png"))
    assert json.loads((out / "eval-vs-gptq" / "results.json").read_text())["baseline"] == "gptq"
    summary = json.loads((out / "summary.json").read_text())
    results = json.loads((out / "eval" / "results.json").read_text())
    for name, row in summary["variants"].items():
        crows = results["per_model"][name]["crows_pairs"]["pct_stereotype"]
        assert row["crows_pct_stereotype"] == crows
        assert row["ppl"] == results["per_model"][name]["wikitext2"]["ppl"]
    table = (out / "summary.md").read_text()
    assert "| ctrl-unrelated | unrelated | 0.1 |" in table and "## Controls" in table

    capsys.readouterr()
    assert reproduce.main(argv) == 0  # a rerun reuses every model and evaluation
    rerun = capsys.readouterr().out
    assert rerun.count("reusing") == 4 and "stored result reused" in rerun
