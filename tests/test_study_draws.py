"""Calibration draws (sanity-check/study/draws.py, sanity-check/draws_report.py): the pooled interval against its
closed form, per-draw differences against hand-computed values, and the report's refusals."""
import json
import math

import numpy as np
import pytest

import draws_report
from study import draws

T_975_2DF = 4.302652729911275  # Student t, 97.5 % quantile, 2 degrees of freedom (printed tables: 4.303)
Z_975 = 1.959963984540054


def crows_run(stereo_wins):
    more = [-1.0 if w else -2.0 for w in stereo_wins]
    return {"per_item": {"index": list(range(len(stereo_wins))), "ll_more": more, "ll_less": [-1.5] * len(more)}}


def stereo_run(stereo_pref):
    """Every item of one target, the unrelated sentence below both: SS = % stereotype preferred, LMS 100."""
    n = len(stereo_pref)
    ll_s = [-1.0 if p else -2.0 for p in stereo_pref]
    ll_a = [-2.0 if p else -1.0 for p in stereo_pref]
    return {"per_item": {"key": [f"k{i}" for i in range(n)], "target": ["A"] * n, "ll_stereotype": ll_s,
                         "n_stereotype": [1] * n, "ll_anti_stereotype": ll_a, "n_anti_stereotype": [1] * n,
                         "ll_unrelated": [-3.0] * n, "n_unrelated": [1] * n}}


def wiki_run(window_nll, tokens_per_window=10):
    return {"metrics": {"n_windows": len(window_nll), "n_tokens": tokens_per_window * len(window_nll),
                        "ppl": math.exp(sum(window_nll) / (tokens_per_window * len(window_nll)))},
            "per_item": {"window_nll": list(window_nll)}}


def variant(crows_wins, stereo_pref, window_nll):
    return {"crows_pairs": crows_run(crows_wins), "stereoset": stereo_run(stereo_pref),
            "wikitext2": wiki_run(window_nll)}


def test_no_item_noise_gives_the_t_interval_over_draws():
    """Items that do not move (every resample equal to the full set): only the draws' spread, t with k-1 df."""
    full = np.array([1.0, 2.0, 4.0])
    combined = draws.combine_draws(full, np.repeat(full[:, None], 50, axis=1))
    s = math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    half = T_975_2DF * s / math.sqrt(3)
    assert combined["diff"] == pytest.approx(7 / 3)
    assert combined["df"] == pytest.approx(2.0)
    assert combined["ci"] == pytest.approx([7 / 3 - half, 7 / 3 + half])
    assert combined["se_items"] == 0.0


def test_identical_draws_give_the_item_interval():
    """No spread between draws: the normal interval of the items alone (the mean over draws of each resample)."""
    full = np.array([1.0, 1.0])
    resampled = np.array([[0.0, 2.0, 0.0, 2.0], [0.0, 2.0, 0.0, 2.0]])  # means 0, 2, 0, 2: variance 4/3
    combined = draws.combine_draws(full, resampled)
    se = math.sqrt(4 / 3)
    assert combined["df"] == math.inf
    assert combined["ci"] == pytest.approx([1 - Z_975 * se, 1 + Z_975 * se])


def test_both_sources_combine_with_satterthwaite_df():
    full = np.array([0.0, 3.0])
    resampled = np.array([[-1.0, 1.0, -1.0, 1.0], [2.0, 4.0, 2.0, 4.0]])  # means 0.5, 2.5: var_items 4/3
    combined = draws.combine_draws(full, resampled)
    var_items, var_draws = 4 / 3, 4.5 / 2  # sample variance of (0, 3) is 4.5, over k = 2
    df = (var_items + var_draws) ** 2 * 1 / var_draws ** 2
    assert combined["df"] == pytest.approx(df)
    assert combined["se_draws"] == pytest.approx(math.sqrt(var_draws))
    assert combined["sd_between_draws"] == pytest.approx(math.sqrt(4.5))
    assert combined["per_draw"] == [0.0, 3.0]


def test_draws_on_independent_item_noise_average_it():
    """Item resamples that move the two draws independently: the variance of their mean is half of each one's
    (a sum of per-draw variances without the 1/k would give 4/3, a perfect-correlation formula the same)."""
    full = np.array([0.0, 0.0])
    resampled = np.array([[1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0]])  # means 1, 0, 0, -1: variance 2/3
    combined = draws.combine_draws(full, resampled)
    assert combined["se_items"] == pytest.approx(math.sqrt(2 / 3))
    assert combined["ci"] == pytest.approx([-Z_975 * math.sqrt(2 / 3), Z_975 * math.sqrt(2 / 3)])


def test_every_draw_sees_the_same_item_resamples():
    same = (variant([1, 1, 0, 0], [1, 0, 1, 0], [10, 12]), variant([1, 0, 0, 0], [1, 1, 0, 0], [11, 12]))
    for metric in draws.DRAW_METRICS:
        _, resampled = draws.draw_differences([same, same], metric, 30, 3)
        assert (resampled[0] == resampled[1]).all(), metric


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="draws"):
        draws.combine_draws(np.zeros(3), np.zeros((2, 10)))


def test_per_draw_differences_by_hand():
    # draw 1: method CrowS 2/4 = 50 %, control 4/4 = 100 %: -50 signed, distance 0 - 50 = -50
    # draw 2: method 1/4 = 25 %, control 3/4 = 75 %: -50 signed, distance 25 - 25 = 0
    pairs = [(variant([1, 1, 0, 0], [1, 1, 1, 0], [10, 10]), variant([1, 1, 1, 1], [1, 0, 0, 0], [20, 20])),
             (variant([1, 0, 0, 0], [1, 1, 0, 0], [10, 10]), variant([1, 1, 1, 0], [1, 1, 0, 0], [10, 10]))]
    full, resampled = draws.draw_differences(pairs, "crows", 20, 0)
    assert full == pytest.approx([-50.0, -50.0])
    assert resampled.shape == (2, 20)
    full, _ = draws.draw_differences(pairs, "crows_distance", 20, 0)
    assert full == pytest.approx([-50.0, 0.0])
    full, _ = draws.draw_differences(pairs, "ss", 20, 0)  # 75 - 25 and 50 - 50
    assert full == pytest.approx([50.0, 0.0])
    full, _ = draws.draw_differences(pairs, "log_ppl", 20, 0)  # exp(20/20) over exp(40/20): log ratio -1; then 0
    assert full == pytest.approx([-1.0, 0.0])
    pooled = draws.compare_over_draws(pairs, 50, 0)
    assert pooled["ppl_ratio"]["per_draw"] == pytest.approx([math.exp(-1.0), 1.0])
    assert pooled["crows"]["diff"] == pytest.approx(-50.0)


def test_draws_on_different_items_are_refused():
    pairs = [(variant([1, 0], [1, 0], [1, 1]), variant([1, 0], [1, 0], [1, 1])),
             (variant([1, 0, 1], [1, 0], [1, 1]), variant([1, 0, 1], [1, 0], [1, 1]))]
    with pytest.raises(ValueError, match="different items"):
        draws.draw_differences(pairs, "crows", 10, 0)


def _store(folder, name, runs, seed, pairs_sha="p", pairs=256, job_seed=None, quantization=True):
    run_dir = folder / "runs" / name
    run_dir.mkdir(parents=True)
    for task, run in runs.items():
        (run_dir / f"{task}.json").write_text(json.dumps({"format": "fair_gptq.evaluation.run/1", "task": task,
                                                          **run}))
    job_seed = seed if job_seed is None else job_seed
    (run_dir / "job.json").write_text(json.dumps({"variant": {"name": name, "alpha": 1.0},
                                                  "settings": {"model": "m", "pairs": pairs, "seed": job_seed}}))
    if quantization:
        (run_dir / "quantization.json").write_text(json.dumps({"calibration": {"sha256": f"{pairs_sha}{seed}"}}))


def _draw(folder, seed, wins=(1, 1, 0, 0), **control):
    _store(folder, "stereo-anti-a1", variant(list(wins), [1, 0, 1, 0], [10, 12]), seed)
    _store(folder, "unrelated-a1", variant([1, 1, 1, 0], [1, 0, 0, 0], [11, 12]), seed, "u", **control)
    return folder


def test_report_end_to_end_and_refusals(tmp_path):
    folders = [_draw(tmp_path / f"seed{seed}", seed, wins)
               for seed, wins in ((0, [1, 1, 0, 0]), (1, [1, 0, 0, 0]), (2, [1, 1, 1, 0]))]
    out = tmp_path / "out"
    argv = [a for f in folders for a in ("--draw", str(f))] + ["--out", str(out), "--bootstrap", "100"]
    assert draws_report.main(argv) == 0
    report = json.loads((out / "draws.json").read_text())
    # method CrowS 50, 25, 75 against the control's 75 each time
    assert report["pooled"]["crows"]["per_draw"] == pytest.approx([-25.0, -50.0, 0.0])
    assert report["seeds"] == [0, 1, 2]
    markdown = (out / "draws.md").read_text()
    assert markdown.count("\n| ") >= 3 + 6
    # every row of the pooled table has the header's 7 cells: the |x − 50| labels are escaped
    pooled = [l for l in markdown.splitlines() if l.startswith("| CrowS") or l.startswith("| StereoSet")]
    assert len(pooled) == 5 and all(l.replace("\\|", "").count("|") == 8 for l in pooled)
    assert (out / "draws.csv").read_text().startswith("metric,diff,ci_low,ci_high")
    assert (out / "draws.png").stat().st_size > 0 and "![draws.png](draws.png)" in markdown
    # the same folder twice is one draw, not two
    assert draws_report.main(["--draw", str(folders[0]), "--draw", str(folders[0]), "--out", str(out)]) == 2
    # a draw without the control's job
    lonely = tmp_path / "lonely"
    _store(lonely, "stereo-anti-a1", variant([1, 0, 0, 0], [1, 0, 1, 0], [10, 12]), 5)
    assert draws_report.main(["--draw", str(folders[0]), "--draw", str(lonely), "--out", str(out)]) == 2


@pytest.mark.parametrize("case", ["control-other-pairs", "control-other-seed", "same-pairs", "no-quantization",
                                  "one-draw", "few-resamples"])
def test_report_refuses_draws_that_differ_beyond_the_seed(tmp_path, case, capsys):
    first = _draw(tmp_path / "a", 0)
    extra = {"control-other-pairs": {"pairs": 64}, "control-other-seed": {"job_seed": 9},
             "no-quantization": {"quantization": False}}.get(case, {})
    second = _draw(tmp_path / "b", 1, **extra)
    if case == "same-pairs":  # the seed changed nothing: the calibration pairs' sha256 repeats
        (second / "runs" / "stereo-anti-a1" / "quantization.json").write_text(
            json.dumps({"calibration": {"sha256": "p0"}}))
    argv = ["--draw", str(first), "--draw", str(second), "--out", str(tmp_path / "out")]
    if case == "one-draw":
        argv = argv[2:]
    if case == "few-resamples":
        argv += ["--bootstrap", "10"]
    assert draws_report.main(argv) == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "out" / "draws.json").exists()
