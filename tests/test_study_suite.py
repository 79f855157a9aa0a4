"""The suite report's statistics against values computed by hand (sanity-check/study/suite.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from study import suite

pytest.importorskip("lm_eval")


def _items(acc):
    return {"doc_id": list(range(len(acc))), "acc": [float(a) for a in acc]}


def _bbq(rows):
    """rows: (acc, n_biased, n_non_unknown, disambiguated)."""
    return {"doc_id": list(range(len(rows))), "acc": [float(r[0]) for r in rows],
            "accuracy_amb": [[float(r[0]), float(r[3])] for r in rows],
            "amb_bias_score": [[float(v) for v in r] for r in rows]}


# ambiguous: acc 1/4; of 3 non-unknown answers 2 biased -> S = 2·2/3 − 1 = 1/3; amb bias = (1 − 1/4)·1/3 = 1/4
# disambiguated: 2 non-unknown answers, 1 biased -> S = 0
BBQ_ROWS = [(1, 0, 0, 0), (0, 1, 1, 0), (0, 1, 1, 0), (0, 0, 1, 0), (1, 1, 1, 1), (0, 0, 1, 1)]


def _write(out, name, items, match=True):
    run_dir = out / "runs" / name
    run_dir.mkdir(parents=True)
    (run_dir / "lm_eval.json").write_text(json.dumps({"per_item": items, "data": {"subsets": {}}}))
    (run_dir / "suite_job.json").write_text(json.dumps({"checkpoint_check": {"match": match}}))


def test_bbq_scores_are_lm_evals_on_known_counts():
    items = _bbq(BBQ_ROWS)
    assert suite.bbq_statistic(items, "amb_bias_score") == pytest.approx(0.25)
    assert suite.bbq_statistic(items, "disamb_bias_score") == pytest.approx(0.0)
    assert suite.bbq_statistic(items, "accuracy_amb") == pytest.approx(0.25)
    assert suite.bbq_statistic(items, "accuracy_disamb") == pytest.approx(0.5)


def test_zeroshot_average_retention_and_paired_differences(tmp_path):
    fp = {task: _items([1, 1, 0, 0]) for task in suite.ZEROSHOT_TASKS}  # 0.5 each
    q = {task: _items([1, 0, 0, 0]) for task in suite.ZEROSHOT_TASKS}  # 0.25 each
    fp["truthfulqa_mc2"] = _items([0.8, 0.6, 0.4, 0.2])  # MC2 scores are fractions: mean 0.5
    fp[suite.BBQ] = q[suite.BBQ] = _bbq(BBQ_ROWS)
    _write(tmp_path, "fp", fp)
    _write(tmp_path, "gptq", q, match=False)
    summary = suite.write_suite_report(tmp_path, ["fp", "gptq", "absent"], ["# t"], n_boot=200, seed=0)
    rows = {row["variant"]: row for row in summary["variants"]}
    assert rows["fp"]["zeroshot_avg"]["value"] == pytest.approx(0.5)
    assert rows["gptq"]["zeroshot_avg"]["value"] == pytest.approx(0.25)
    assert rows["gptq"]["zeroshot_retention_pct"]["value"] == pytest.approx(50.0)
    assert rows["fp"]["zeroshot_retention_pct"]["value"] == pytest.approx(100.0)
    assert rows["fp"]["zeroshot_retention_pct"]["ci"] == pytest.approx([100.0, 100.0])  # paired: the same resamples
    assert rows["gptq"]["first_stage_model"] is False and rows["fp"]["first_stage_model"] is True
    diff = next(d for d in summary["differences"] if d["variant"] == "gptq" and d["reference"] == "fp")
    assert diff["zeroshot_avg"]["value"] == pytest.approx(-0.25)
    low, high = diff["zeroshot_avg"]["ci"]
    assert low <= -0.25 <= high
    assert diff["bbq_amb_bias_score"]["value"] == 0 and diff["bbq_amb_bias_score"]["ci"] == [0, 0]  # same items
    markdown = (tmp_path / "suite.md").read_text()
    diff_gptq = next(d for d in summary["differences"] if d["variant"] == "gptq")
    assert diff_gptq["both_first_stage_model"] is False
    assert markdown.count("gptq †") == 2 and (tmp_path / "suite.csv").read_text().startswith("variant,")


def test_each_method_is_compared_with_its_own_controls(tmp_path):
    accs = {"fp": [1, 1, 1, 0], "gptq": [1, 1, 0, 0], "stereo-anti-a1": [1, 0, 0, 0], "unrelated-a1": [1, 1, 1, 1]}
    for name, acc in accs.items():
        _write(tmp_path, name, {task: _items(acc) for task in suite.ZEROSHOT_TASKS})
    controls = {"stereo-anti-a1": ["unrelated-a1", "shuffled-a1"], "unrelated-a1": []}  # shuffled-a1: no suite run
    summary = suite.write_suite_report(tmp_path, list(accs), ["# t"], n_boot=200, seed=0, controls=controls)
    pairs = [(d["variant"], d["reference"]) for d in summary["differences"]]
    assert ("stereo-anti-a1", "unrelated-a1") in pairs and ("unrelated-a1", "stereo-anti-a1") not in pairs
    assert not any(reference == "shuffled-a1" for _, reference in pairs)
    assert len(pairs) == 3 + 2 + 1  # three variants minus FP, two minus GPTQ, one method minus its control
    diff = next(d for d in summary["differences"] if d["reference"] == "unrelated-a1")
    assert diff["piqa"]["value"] == pytest.approx(0.25 - 1.0)
    assert "| stereo-anti-a1 | unrelated-a1 |" in (tmp_path / "suite.md").read_text()


def test_variants_with_other_items_are_left_out_and_named(tmp_path):
    _write(tmp_path, "fp", {"piqa": _items([1, 0])})
    other = _items([1, 0])
    other["doc_id"] = [0, 2]
    _write(tmp_path, "gptq", {"piqa": other})
    summary = suite.write_suite_report(tmp_path, ["gptq", "fp"], ["# t"], n_boot=10)
    assert [row["variant"] for row in summary["variants"]] == ["fp"] and "piqa" in summary["excluded"]["gptq"]
    assert "Left out: gptq" in (tmp_path / "suite.md").read_text()


def test_task_resamples_do_not_depend_on_the_other_tasks():
    one = suite.resamples({"piqa": list(range(5))}, 20, 0)["piqa"]
    two = suite.resamples({"boolq": list(range(9)), "piqa": list(range(5))}, 20, 0)["piqa"]
    assert (one == two).all()


def test_no_suite_run_writes_nothing(tmp_path):
    assert suite.write_suite_report(tmp_path, ["fp"], ["# t"]) is None
    assert not (tmp_path / "suite.md").exists()


def test_floor_rates_are_guessing_and_the_majority_answer():
    items = {"loglikelihoods": [[0, 0], [0, 0], [0, 0, 0, 0]], "target": [1, 1, 0]}
    rates = suite.floor_rates(items)
    assert rates["chance"] == pytest.approx((0.5 + 0.5 + 0.25) / 3) and rates["majority"] == pytest.approx(2 / 3)


def _stat(value, n=5):
    return (value, np.full(n, value))


def test_matched_accuracy_interpolates_the_degradation_curve_by_hand():
    stats = {"fp": {"piqa": _stat(0.8), "bbq_amb_bias_score": _stat(0.0)},
             "gptq": {"piqa": _stat(0.6), "bbq_amb_bias_score": _stat(-0.2)},  # distance from 0: 0.2
             "method": {"piqa": _stat(0.7), "bbq_amb_bias_score": _stat(-0.05)},
             "worse": {"piqa": _stat(0.5), "bbq_amb_bias_score": _stat(0.3)}}
    matched = suite.matched_accuracy(stats, ["fp", "gptq", "gptq-3bit"], "piqa")
    assert matched[0] == {"axis": "piqa", "curve": ["fp", "gptq"], "monotone": True, "curve_axis": [0.8, 0.6]}
    entries = {e["variant"]: e for e in matched[1:]}
    # the curve at accuracy 0.7 is halfway: |bias| 0.1; the method's |bias| 0.05
    assert entries["method"]["curve_value"] == pytest.approx(0.1)
    assert entries["method"]["value"] == pytest.approx(-0.05) and entries["method"]["ci"] == pytest.approx([-0.05, -0.05])
    assert "value" not in entries["worse"] and "outside the curve's range" in entries["worse"]["note"]
    # beyond the worst end (gptq, 0.6) by 0.1, on every resample alike
    assert entries["worse"]["nearest_end"] == "gptq"
    assert entries["worse"]["axis_minus_nearest_end"]["value"] == pytest.approx(-0.1)
    assert entries["worse"]["axis_minus_nearest_end"]["ci"] == pytest.approx([-0.1, -0.1])
    lines = "\n".join(suite._matched_lines(matched))
    assert "-10.00 [-10.00, -10.00] * (gptq)" in lines
    assert suite.interpolate_along([0.6, 0.8], [0.2, 0.0], 0.65) == pytest.approx(0.15)
    assert suite.interpolate_along([0.8, 0.6], [0.0, 0.2], 0.9) is None


def test_matched_accuracy_orders_a_curve_that_does_not_fall_by_accuracy():
    stats = {"fp": {"piqa": _stat(0.6), "bbq_amb_bias_score": _stat(0.0)},
             "gptq": {"piqa": _stat(0.7), "bbq_amb_bias_score": _stat(0.1)},
             "method": {"piqa": _stat(0.65), "bbq_amb_bias_score": _stat(0.0)}}
    curve, entry = suite.matched_accuracy(stats, ["fp", "gptq"], "piqa")
    assert curve["monotone"] is False and curve["curve_axis"] == [0.6, 0.7]
    assert entry["monotone"] is False and entry["value"] == pytest.approx(-0.05)  # curve at 0.65: |0.05|
