"""fair_gptq_v7.compare on two hand-made run folders (no quantization)."""
import csv
import json

import pytest

from fair_gptq_v7 import compare


def write_runs(tmp_path, old, new, same_pairs=True):
    overlay, port = tmp_path / "overlay", tmp_path / "port"
    (port / "fair_logs").mkdir(parents=True)
    overlay.mkdir()
    (overlay / "fair_gptq_run.json").write_text(json.dumps({
        "calibration": {"sha256": "abc"},
        "modules": [{"module": m, "relative_delta_w": v} for m, v in old.items()] + [{"module": "model.layers.0.x"}]}))
    (port / "fair_gptq_run.json").write_text(json.dumps({"run_id": "r2", "calibration_sha256": "abc" if same_pairs else "x"}))
    lines = [{"run_id": "r2", "module": m, "relative_delta_w": v} for m, v in new.items()]
    lines.append({"run_id": "other-run", "module": "model.layers.0.o_proj", "relative_delta_w": 9.0})
    (port / "fair_logs" / "delta_w.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return overlay, port


def test_ratios_per_module_and_summary(tmp_path, capsys):
    old = {"model.layers.10.o_proj": 0.02, "model.layers.2.o_proj": 0.01, "model.layers.2.down_proj": 0.04}
    new = {"model.layers.10.o_proj": 0.03, "model.layers.2.o_proj": 0.01, "model.layers.2.down_proj": 0.02}
    overlay, port = write_runs(tmp_path, old, new)
    assert compare.main(["--overlay", str(overlay), "--port", str(port), "--csv", str(tmp_path / "d.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "d.csv").open()))
    assert [r["module"] for r in rows] == ["model.layers.2.down_proj", "model.layers.2.o_proj", "model.layers.10.o_proj"]
    assert [float(r["ratio"]) for r in rows] == [0.5, 1.0, 1.5]
    out = capsys.readouterr().out
    assert "(same)" in out and "ratio median 1.000 (min 0.500, max 1.500)" in out
    assert compare.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)


def test_different_module_sets_are_refused(tmp_path):
    overlay, port = write_runs(tmp_path, {"model.layers.1.o_proj": 0.1}, {"model.layers.2.o_proj": 0.1})
    with pytest.raises(SystemExit, match="different modules"):
        compare.main(["--overlay", str(overlay), "--port", str(port), "--csv", str(tmp_path / "d.csv")])
