"""The study's comparisons and the mechanism measurement, on hand-computed values."""
import json
import math

import numpy as np
import pytest
import torch

from evaluation import metrics
from study import analysis, mechanism


def crows_run(stereo_wins: list[int]) -> dict:
    """A stored CrowS run whose pair i prefers the stereotype sentence iff stereo_wins[i]."""
    more = [-1.0 if w else -2.0 for w in stereo_wins]
    return {"per_item": {"index": list(range(len(stereo_wins))), "ll_more": more, "ll_less": [-1.5] * len(more)}}


def stereo_run(targets, stereo_pref, related) -> dict:
    """A stored StereoSet run from per-item choices: stereotype preferred? how many of the two beat unrelated?"""
    ll_s, ll_a, ll_u = [], [], []
    for pref, rel in zip(stereo_pref, related):
        s, a = (-1.0, -2.0) if pref else (-2.0, -1.0)
        # unrelated sits below 0, 1 or 2 of them
        u = {2: -3.0, 1: -1.5, 0: 0.0}[rel]
        ll_s.append(s), ll_a.append(a), ll_u.append(u)
    n = len(targets)
    return {"per_item": {"key": [f"k{i}" for i in range(n)], "target": list(targets), "ll_stereotype": ll_s,
                         "n_stereotype": [1] * n, "ll_anti_stereotype": ll_a, "n_anti_stereotype": [1] * n,
                         "ll_unrelated": ll_u, "n_unrelated": [1] * n}}


def test_point_values_by_hand():
    assert analysis.point_value(crows_run([1, 0, 1, 1]), "crows") == 75.0
    # target A: items (pro, related) = (1, 2), (0, 1) -> SS 50, LMS (2 + 1) / 4 = 75
    # target B: item (1, 0) -> SS 100, LMS 0 ; macro: SS 75, LMS 37.5
    run = stereo_run(["A", "A", "B"], [1, 0, 1], [2, 1, 0])
    assert analysis.point_value(run, "ss") == pytest.approx(75.0)
    assert analysis.point_value(run, "lms") == pytest.approx(37.5)


def test_lms_resampler_matches_the_reference_metric():
    rng = np.random.default_rng(3)
    n = 60
    targets = [f"t{i % 7}" for i in range(n)]
    run = stereo_run(targets, rng.integers(0, 2, n).tolist(), rng.integers(0, 3, n).tolist())
    per = run["per_item"]
    reference = metrics.stereoset_metrics(np.exp(per["ll_stereotype"]), np.exp(per["ll_anti_stereotype"]),
                                          np.exp(per["ll_unrelated"]), targets, ["gender"] * n)["overall"]
    assert analysis.point_value(run, "lms") == pytest.approx(reference["lms"])
    assert analysis.point_value(run, "ss") == pytest.approx(reference["ss"])


def test_paired_difference_sign_and_interval():
    a, b = crows_run([1, 1, 1, 1, 0] * 20), crows_run([1, 0, 1, 0, 0] * 20)
    d = analysis.paired_difference(a, b, "crows", 500, 0)
    assert d["diff"] == pytest.approx(40.0 - 80.0) and d["n"] == 100
    assert d["ci"][0] < -40 + 1e-9 < d["ci"][1] < 0
    with pytest.raises(ValueError, match="different items"):
        analysis.paired_difference(a, crows_run([1] * 99), "crows", 10, 0)


def test_interpolation_in_log_perplexity():
    # log-midpoint of 10 and 1000 is 100
    assert analysis.interpolate_log_ppl([10, 1000], [50.0, 40.0], 100.0) == pytest.approx(45.0)
    assert analysis.interpolate_log_ppl([1000, 10], [40.0, 50.0], 100.0) == pytest.approx(45.0)  # any order
    assert analysis.interpolate_log_ppl([10, 1000], [50.0, 40.0], 9.0) is None
    assert analysis.interpolate_log_ppl([10, 1000], [50.0, 40.0], 1001.0) is None
    both = analysis.interpolate_log_ppl([10, 1000], np.array([[50.0, 60.0], [40.0, 20.0]]), 100.0)
    np.testing.assert_allclose(both, [45.0, 40.0])


def test_matched_perplexity_difference_by_hand():
    # curve: 50 % at ppl 10, 40 % at ppl 1000 -> 45 % at ppl 100; method at ppl 100 with 30 %
    curve = [crows_run([1] * 10 + [0] * 10), crows_run([1] * 8 + [0] * 12)]
    method = crows_run([1] * 6 + [0] * 14)
    d = analysis.matched_ppl_difference(method, 100.0, curve, [10.0, 1000.0], "crows", 300, 0)
    assert d["curve_value"] == pytest.approx(45.0) and d["diff"] == pytest.approx(-15.0)
    assert d["ci"][0] <= -15.0 <= d["ci"][1]
    outside = analysis.matched_ppl_difference(method, 5000.0, curve, [10.0, 1000.0], "crows", 300, 0)
    assert outside["diff"] is None and outside["side"] == "above"
    assert analysis.matched_ppl_difference(method, 5.0, curve, [10.0, 1000.0], "crows", 300, 0)["side"] == "below"


def test_paired_interval_is_tighter_than_an_unpaired_one():
    """B differs from A in one item of 100: in a paired resample the difference is minus the number of copies of
    that item (Binomial(100, 0.01): 95 % within 0-4); an unpaired bootstrap would spread it over about +-14."""
    wins = [1, 0] * 50
    a = crows_run(wins)
    b = crows_run([0] + wins[1:])  # item 0 flips from stereotype to anti
    d = analysis.paired_difference(a, b, "crows", 500, 0)
    assert d["diff"] == pytest.approx(-1.0)
    assert -5.0 <= d["ci"][0] <= d["ci"][1] <= 0.0


def wiki_run(window_nll, tokens_per_window=4):
    n = len(window_nll)
    return {"metrics": {"n_windows": n, "n_tokens": n * tokens_per_window,
                        "ppl": math.exp(sum(window_nll) / (n * tokens_per_window))},
            "per_item": {"window_nll": list(window_nll)}}


def test_resampled_perplexity_by_hand():
    run = wiki_run([4.0, 8.0, 12.0])  # per-token NLL 1, 2, 3
    idx = np.array([[0, 1, 2], [0, 0, 0], [2, 2, 1]])
    np.testing.assert_allclose(analysis.resampled_ppl(run, idx), [math.exp(2.0), math.exp(1.0), math.exp(8 / 3)])
    uneven = {"metrics": {"n_windows": 2, "n_tokens": 7}, "per_item": {"window_nll": [1.0, 2.0]}}
    with pytest.raises(ValueError, match="different numbers of tokens"):
        analysis.resampled_ppl(uneven, idx[:, :2] % 2)


def test_matched_difference_with_resampled_windows():
    """Identical windows everywhere except that each variant's NLL is shifted: perplexities keep their ratios in
    every resample, so the interpolated point stays where it is and the interval equals the items-only one.
    A method whose windows disagree with its point estimate widens it instead."""
    curve = [crows_run([1] * 10 + [0] * 10), crows_run([1] * 8 + [0] * 12)]
    method = crows_run([1] * 6 + [0] * 14)
    base = [1.0, 1.5, 2.0, 2.5] * 4
    log10, log1000, log100 = math.log(10), math.log(1000), math.log(100)

    def shifted(target_log_ppl):  # windows of 4 tokens whose mean per-token NLL is target_log_ppl
        mean = sum(base) / len(base)
        return wiki_run([4 * (x - mean + target_log_ppl) for x in base])

    wikis = [shifted(log10), shifted(log1000)]
    fixed = analysis.matched_ppl_difference(method, 100.0, curve, [10.0, 1000.0], "crows", 300, 0)
    resampled = analysis.matched_ppl_difference(method, 100.0, curve, [10.0, 1000.0], "crows", 300, 0,
                                             method_wiki=shifted(log100), curve_wikis=wikis)
    assert resampled["windows_resampled"] and resampled["resamples_out_of_range"] == 0
    assert resampled["diff"] == pytest.approx(fixed["diff"])
    np.testing.assert_allclose(resampled["ci"], fixed["ci"], atol=1e-9)
    # the method's windows vary differently from the curve's: its perplexity moves along the curve per resample
    noisy = wiki_run([4 * log100 + 4 * d for d in [-1.0, 1.0] * 8])
    wider = analysis.matched_ppl_difference(method, 100.0, curve, [10.0, 1000.0], "crows", 300, 0,
                                         method_wiki=noisy, curve_wikis=wikis)
    assert wider["ci"][1] - wider["ci"][0] > fixed["ci"][1] - fixed["ci"][0]


def test_non_monotone_curve_is_flagged():
    runs = [crows_run([1] * 10 + [0] * 10), crows_run([1] * 9 + [0] * 11), crows_run([1] * 8 + [0] * 12)]
    method = crows_run([1] * 6 + [0] * 14)
    # alpha order gives perplexities 10, 30, 20: sorted by perplexity the curve is 50 %, 40 % (ppl 20), 45 % (ppl 30)
    d = analysis.matched_ppl_difference(method, 20.0, runs, [10.0, 30.0, 20.0], "crows", 100, 0)
    assert d["monotone"] is False and d["curve_value"] == pytest.approx(40.0)
    assert analysis.matched_ppl_difference(method, 20.0, runs, [10.0, 20.0, 30.0], "crows", 100, 0)["monotone"] is True


def test_squared_norm_and_ratio_by_hand():
    m = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    d = torch.tensor([[1.0, 1.0], [0.0, 3.0]])  # rows are difference vectors: M d = (1, 2), (0, 6)
    assert mechanism.squared_norm(m, d) == pytest.approx(1 + 4 + 36)
    assert mechanism.ratio(25.0, 100.0) == pytest.approx(0.5)
    assert math.isnan(mechanism.ratio(1.0, 0.0))


class AffineWithBuffers(torch.nn.Module):
    """A linear map that stores its matrix in buffers, like a quantized kernel (no float .weight)."""

    def __init__(self, matrix, bias):
        super().__init__()
        self.register_buffer("stored", matrix.clone())
        self.register_buffer("scales", bias.clone())

    def forward(self, x):
        return x @ self.stored.T + self.scales


def test_linear_matrix_reads_the_applied_matrix():
    q = torch.randn(3, 5)
    recovered = mechanism.linear_matrix(AffineWithBuffers(q, torch.randn(3)), 5)
    torch.testing.assert_close(recovered, q, rtol=0, atol=1e-6)
    linear = torch.nn.Linear(5, 3)
    torch.testing.assert_close(mechanism.linear_matrix(linear, 5), linear.weight.detach())


def test_linear_matrix_probes_in_the_given_dtype():
    """A half-precision kernel with a large bias: probing in float16 rounds Q + b (step 2**-8 near |b| = 4)
    before b is subtracted; probing in the evaluation dtype (float32) recovers Q to float32 precision."""
    q = (torch.randn(3, 5) * 0.02).half()
    bias = torch.full((3,), 4.0).half()

    class HalfKernel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("scales", torch.ones(1, dtype=torch.float16))

        def forward(self, x):
            return x @ q.to(x.dtype).T + bias.to(x.dtype)

    half = mechanism.linear_matrix(HalfKernel(), 5)
    full = mechanism.linear_matrix(HalfKernel(), 5, torch.float32)
    assert (half - q.float()).abs().max() > 1e-4  # the rounding the dtype argument avoids
    torch.testing.assert_close(full, q.float(), rtol=0, atol=1e-6)


def test_paired_ratio_difference():
    w = [4.0, 4.0, 4.0, 4.0]
    d = mechanism.paired_ratio_difference(w, [4.0] * 4, [1.0] * 4, 200, 0)
    assert d["diff"] == pytest.approx(0.5 - 1.0) and d["ci"] == pytest.approx([-0.5, -0.5])


def test_squared_norms_of_a_chunk_equal_the_one_by_one_norms():
    gen = torch.Generator().manual_seed(1)
    m = torch.randn(4, 3, generator=gen)
    diffs = [torch.randn(n, 3, generator=gen) for n in (2, 5, 1)]
    assert mechanism.squared_norms(m, diffs) == pytest.approx([mechanism.squared_norm(m, d) for d in diffs], rel=1e-12)


def test_pair_mean_difference_averages_over_the_positions_that_differ():
    d = torch.tensor([[0.0, 0.0], [2.0, -4.0], [0.0, 0.0], [4.0, 1.0]])  # two positions differ
    assert mechanism.pair_mean_difference(d).tolist() == [3.0, -1.5]
    assert mechanism.pair_mean_difference(torch.zeros(3, 2)).tolist() == [0.0, 0.0]  # nothing differs: mean 0


def test_mean_direction_ratio_against_a_direct_computation():
    gen = torch.Generator().manual_seed(0)
    means = torch.randn(7, 3, generator=gen, dtype=torch.float64)  # 7 pairs' m_p, 3 input columns
    w, q = torch.randn(2, 3, generator=gen, dtype=torch.float64), torch.randn(2, 3, generator=gen, dtype=torch.float64)
    g_w, g_q = mechanism.mean_direction_grams(means, w, q)
    result = mechanism.mean_direction_ratio(g_w, g_q, n_resamples=50, seed=3)
    mu = means.mean(dim=0)
    assert result["ratio"] == pytest.approx(float(torch.linalg.norm(q @ mu) / torch.linalg.norm(w @ mu)))
    # resample 0 by hand: the mean of the resampled pairs' m_p
    idx = np.random.default_rng(3).integers(0, 7, size=(50, 7))[0]
    mu0 = means[torch.as_tensor(idx)].mean(dim=0)
    assert result["resampled"][0] == pytest.approx(float(torch.linalg.norm(q @ mu0) / torch.linalg.norm(w @ mu0)))
    assert result["ci"][0] <= result["ci"][1] and result["n"] == 7 and len(result["resampled"]) == 50
    halved = mechanism.mean_direction_ratio(*mechanism.mean_direction_grams(means, w, 0.5 * w), n_resamples=20)
    assert halved["ratio"] == pytest.approx(0.5) and halved["ci"] == pytest.approx([0.5, 0.5])


def test_paired_mean_direction_difference_uses_the_shared_resamples():
    a = {"ratio": 0.9, "resampled": [0.8, 0.9, 1.0], "n": 5, "bootstrap": {"resamples": 3, "seed": 0}}
    b = {"ratio": 0.7, "resampled": [0.7, 0.7, 0.7], "n": 5, "bootstrap": {"resamples": 3, "seed": 0}}
    d = mechanism.paired_mean_direction_difference(a, b)
    assert d["diff"] == pytest.approx(-0.2) and d["n"] == 5
    assert d["ci"][0] == pytest.approx(-0.3 + 0.025 * 0.2, abs=1e-9) and d["ci"][1] == pytest.approx(-0.1 - 0.025 * 0.2)
    with pytest.raises(ValueError, match="same pairs"):
        mechanism.paired_mean_direction_difference(a, {**b, "n": 6})
    # replicates centred above the plug-in difference: corrected by their mean, interval reflected (by hand:
    # diffs -0.1, -0.2, -0.1, mean -0.1333 against -0.2; 2.5 % / 97.5 % quantiles -0.195 and -0.1)
    skewed = mechanism.paired_mean_direction_difference(a, {**b, "resampled": [0.7, 0.7, 0.9]})
    assert skewed["diff_plugin"] == pytest.approx(-0.2) and skewed["diff"] == pytest.approx(-0.4 + 0.4 / 3)
    assert skewed["ci"] == pytest.approx([-0.4 + 0.1, -0.4 + 0.195])
    reported = mechanism.mean_direction_summary({**b, "resampled": [0.7, 0.7, 1.0]})
    assert reported["plugin"] == 0.7 and reported["ratio"] == pytest.approx(1.4 - 0.8)


@pytest.mark.slow
def test_measure_on_stories260k(stories260k_dir):
    """Same weights -> ratio 1; one module's weights halved -> that module's ratio 0.5, the others 1."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    fp = AutoModelForCausalLM.from_pretrained(stories260k_dir, torch_dtype=torch.float32).eval()
    changed = AutoModelForCausalLM.from_pretrained(stories260k_dir, torch_dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(stories260k_dir)
    names = ["model.layers.0.self_attn.o_proj", "model.layers.1.mlp.down_proj"]
    with torch.no_grad():
        changed.get_submodule(names[1]).weight.mul_(0.5)
    pairs = [("The boy was happy.", "The girl was happy."), ("Tom ran to the big tree.", "Sue ran to a tree.")]
    result = mechanism.measure(fp, tokenizer, changed, names, pairs, progress=False)
    assert result["modules"][names[0]]["ratio_all"] == pytest.approx(1.0)
    assert result["modules"][names[1]]["ratio_all"] == pytest.approx(0.5)
    lengths = [len(tokenizer(s)["input_ids"]) == len(tokenizer(a)["input_ids"]) for s, a in pairs]
    assert result["n_equal_length"] == sum(lengths) and len(result["per_pair"]["w"]) == 2
    w0, w1 = (result["modules"][n]["w_all"] for n in names)
    expected_overall = math.sqrt((w0 + 0.25 * w1) / (w0 + w1))
    assert result["overall"]["ratio_all"] == pytest.approx(expected_overall)
    # along the held-out mean direction: the halved module halves ‖W μ‖, the unchanged one keeps it
    assert result["modules"][names[0]]["mean_direction_ratio"] == pytest.approx(1.0)
    assert result["modules"][names[1]]["mean_direction_ratio"] == pytest.approx(0.5)
    assert 0.5 < result["mean_direction"]["ratio"] < 1.0 and result["mean_direction"]["n"] == 2


def test_distance_from_50_judges_scores_on_both_sides_of_50():
    """A at 60 % and B at 45 %: B is 15 points lower (signed) but only 5 points closer to 50 (10 -> 5)."""
    a, b = crows_run([1] * 60 + [0] * 40), crows_run([1] * 45 + [0] * 55)
    d = analysis.paired_difference(a, b, "crows", 400, 0)
    assert d["diff"] == pytest.approx(-15.0)
    assert d["distance"]["diff"] == pytest.approx(5.0 - 10.0)
    lo, hi = d["distance"]["ci"]
    assert lo <= -5.0 <= hi
    # a score that crosses 50 by as much as it moved: signed -20, distance 0 (55 -> 45 is no closer to 50)
    c, e = crows_run([1] * 55 + [0] * 45), crows_run([1] * 45 + [0] * 55)
    crossed = analysis.paired_difference(c, e, "crows", 400, 0)
    assert crossed["diff"] == pytest.approx(-10.0) and crossed["distance"]["diff"] == pytest.approx(0.0)
    assert "distance" not in analysis.paired_difference(
        stereo_run(["A"] * 4, [1, 0, 1, 1], [2, 2, 1, 0]), stereo_run(["A"] * 4, [1, 0, 0, 1], [2, 1, 1, 0]),
        "lms", 50, 0)  # LMS has 100 as its ideal: no distance from 50


def test_matched_distance_uses_the_interpolated_curve_value():
    # curve 60 % at ppl 10 and 40 % at ppl 1000 -> 50 % at ppl 100; the method at 45 %: 5 points below the curve
    # (signed) but 5 points *farther* from 50 than the curve there (|45 - 50| - |50 - 50| = +5)
    curve = [crows_run([1] * 12 + [0] * 8), crows_run([1] * 8 + [0] * 12)]
    method = crows_run([1] * 9 + [0] * 11)
    d = analysis.matched_ppl_difference(method, 100.0, curve, [10.0, 1000.0], "crows", 300, 0)
    assert d["curve_value"] == pytest.approx(50.0)
    assert d["diff"] == pytest.approx(-5.0) and d["distance"]["diff"] == pytest.approx(5.0)
    assert d["distance"]["ci"][0] <= 5.0 <= d["distance"]["ci"][1]


def _comparison(method, control, crows_distance_ci, ss_distance_ci):
    return {"method": method, "control": control,
            "crows": {"distance": {"diff": sum(crows_distance_ci) / 2, "ci": list(crows_distance_ci)}},
            "ss": {"distance": {"diff": sum(ss_distance_ci) / 2, "ci": list(ss_distance_ci)}}}


def test_verdict_needs_a_win_against_every_control_and_no_loss():
    from study import report

    # closer to 50 than both controls (one on CrowS, one on SS); the base (gptq) does not count
    comps = [_comparison("m", "c1", (-3, -1), (-1, 1)), _comparison("m", "c2", (-2, 2), (-4, -0.5)),
             _comparison("m", "gptq", (1, 2), (1, 2))]
    result = report.verdict(comps)
    assert result["beats_controls"] is True and result["controls"] == ["c1", "c2"]
    assert result["closer_to_50_than"] == [("c1", "crows"), ("c2", "ss")] and result["farther_from_50_than"] == []
    # a control it does not beat
    assert report.verdict(comps[:1] + [_comparison("m", "c2", (-2, 2), (-1, 1))])["beats_controls"] is False
    # a win on one score and a loss on the other
    mixed = report.verdict([_comparison("m", "c1", (-3, -1), (0.5, 2))])
    assert mixed["beats_controls"] is False and mixed["farther_from_50_than"] == [("c1", "ss")]
    # only the base: no control, no verdict
    assert report.verdict([_comparison("m", "gptq", (-3, -1), (-3, -1))])["beats_controls"] is False


def test_methods_at_a_glance_lists_bases_and_methods_with_distances():
    from study import report

    def row(name, crows, ss):
        return {"name": name, "crows_pct_stereotype": crows, "stereoset_ss": ss, "stereoset_lms": 90.0,
                "ppl": 20.0}
    summary = {"variants": [row("fp", 55.0, 61.0), row("gptq", 54.0, 60.0), row("m", 48.0, 58.5),
                            row("c1", 53.0, 59.0)],
               "comparisons": [_comparison("m", "c1", (-3, -1), (-1, 1))]}
    glance = {g["name"]: g for g in report.methods_at_a_glance(summary)}
    assert set(glance) == {"fp", "gptq", "m"}  # c1 is a control, listed only in m's verdict
    assert glance["m"]["crows_distance"] == 2.0 and glance["m"]["ss_distance"] == 8.5
    assert glance["m"]["beats_controls"] is True and "controls" not in glance["fp"]
    assert report._verdict_cell(glance["m"]) == "yes: closer to 50 than c1 (CrowS)"


def test_an_eraser_control_on_another_quantization_of_the_base_is_marked():
    from study import report

    def job(base_sha):
        return {"job": {"base_checkpoint_sha256": base_sha}} if base_sha else {"job": {}}
    assert report.same_base(job("aa"), job("aa")) is True
    assert report.same_base(job("aa"), job("bb")) is False
    assert report.same_base(job(None), job("aa")) is None and report.same_base({}, job("aa")) is None
    comps = [_comparison("m", "c1", (-3, -1), (-1, 1)), _comparison("m", "c2", (-2, -1), (-1, 1))]
    comps[1]["same_base"] = False
    result = report.verdict(comps)
    assert result["beats_controls"] is True and result["controls_on_another_base"] == ["c2"]
    cell = report._verdict_cell({**result, "name": "m"})
    assert cell.endswith("‡ c2 on another quantization of the base")
    assert report.verdict(comps[:1])["controls_on_another_base"] == []


def test_the_report_marks_a_comparison_across_two_quantizations_of_the_base():
    """Rendered from the committed Gemma summary with one eraser control moved to another base."""
    from pathlib import Path

    from study import report

    summary = json.loads((Path(__file__).resolve().parents[1] / "results/gemma3-270m/summary.json").read_text())
    for c in summary["comparisons"]:  # every pair on one base first, whatever the committed jobs ran on
        if "same_base" in c:
            c["same_base"] = True
    summary["methods"] = report.methods_at_a_glance(summary)
    assert "‡" not in report.render_markdown(summary, ["# x"])
    (marked,) = [c for c in summary["comparisons"]
                 if (c["method"], c["control"]) == ("leace-gptq", "leace-gptq-unrelated")]
    marked["same_base"] = False
    summary["methods"] = report.methods_at_a_glance(summary)
    text = report.render_markdown(summary, ["# x"])
    assert "| leace-gptq | – | leace-gptq-unrelated ‡ |" in text and text.count(report.OTHER_BASE_NOTE) == 2
    assert "‡ leace-gptq-unrelated on another quantization of the base" in text
