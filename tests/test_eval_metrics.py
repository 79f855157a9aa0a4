"""Metric functions of evaluation/metrics.py on hand-computed toy scores (no model)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluation import metrics


def test_crows_pairs_overall_and_per_bias_type():
    # pair:            0     1     2 (tie)  3
    ll_more = [-10.0, -5.0, -7.0, -3.0]
    ll_less = [-12.0, -4.0, -7.0, -8.0]
    types = ["gender", "gender", "race-color", "race-color"]
    out = metrics.crows_pairs_metrics(ll_more, ll_less, types)
    # pct_stereotype: [1, 0, 0 (a tie is not "more likely"), 1]; likelihood_diff: [2, 1, 0, 5]
    assert out["overall"]["n"] == 4
    assert out["overall"]["pct_stereotype"] == pytest.approx(0.5)
    assert out["overall"]["likelihood_diff"] == pytest.approx(2.0)
    # lm-eval's stderr: sample std (ddof=1) / sqrt(n); std([1,0,0,1], ddof=1) = sqrt(1/3)
    assert out["overall"]["pct_stereotype_stderr"] == pytest.approx(math.sqrt(1 / 3) / 2)
    half = math.sqrt(0.5) / math.sqrt(2)  # std([1, 0], ddof=1) / sqrt(2), and the same for [2, 1]
    assert out["by_bias_type"]["gender"] == pytest.approx(
        {"n": 2, "pct_stereotype": 0.5, "likelihood_diff": 1.5, "pct_stereotype_stderr": half,
         "likelihood_diff_stderr": half}
    )
    assert out["by_bias_type"]["race-color"]["pct_stereotype"] == pytest.approx(0.5)
    assert out["by_bias_type"]["race-color"]["likelihood_diff"] == pytest.approx(2.5)


def test_crows_pairs_single_pair_has_no_stderr():
    out = metrics.crows_pairs_metrics([-1.0], [-2.0], ["age"])
    assert out["overall"]["pct_stereotype"] == 1.0
    assert math.isnan(out["overall"]["pct_stereotype_stderr"])


def test_stereoset_sentence_score_is_geometric_mean_probability():
    # token probabilities 1/2, 1/4, 1/8: geometric mean (1/64)^(1/3) = 1/4; log-likelihood ln(1/64)
    assert metrics.stereoset_sentence_scores([-6 * math.log(2)], [3])[0] == pytest.approx(0.25)
    # two sentences at once: probabilities 0.9 (one token) and 0.01 * 0.04 (two tokens: geometric mean 0.02)
    scores = metrics.stereoset_sentence_scores([math.log(0.9), math.log(0.01 * 0.04)], [1, 2])
    assert scores == pytest.approx([0.9, 0.02])
    with pytest.raises(ValueError):
        metrics.stereoset_sentence_scores([0.0], [0])


def _toy_stereoset():
    # item: target,   domain,      s,   a,   u
    rows = [
        ("nurse", "profession", 0.9, 0.1, 0.5),  # pro; related: s>u, a<u -> 1
        ("nurse", "profession", 0.2, 0.2, 0.1),  # tie s == a -> anti; related 2
        ("nurse", "profession", 0.3, 0.6, 0.3),  # anti; s == u not related, a>u -> 1
        ("chess", "profession", 0.7, 0.4, 0.5),  # pro; related 1
        ("Iraq", "race", 0.4, 0.5, 0.1),  # anti; related 2
        ("Iraq", "race", 0.6, 0.5, 0.9),  # pro; related 0
    ]
    s, a, u = ([r[i] for r in rows] for i in (2, 3, 4))
    return s, a, u, [r[0] for r in rows], [r[1] for r in rows]


def test_stereoset_per_target_macro_average_and_ties():
    out = metrics.stereoset_metrics(*_toy_stereoset())
    # profession: nurse SS 100*1/3, LMS 100*4/6; chess SS 100, LMS 50 -> macro means
    prof = out["profession"]
    assert prof["n_items"] == 4 and prof["n_targets"] == 2
    assert prof["ss"] == pytest.approx((100 / 3 + 100) / 2)
    assert prof["lms"] == pytest.approx((400 / 6 + 50) / 2)
    # ICAT from the means (LMS 175/3, SS 200/3): 175/3 * (100/3) / 50 = 350/9, not the mean of the per-target
    # ICATs (nurse 200/3 * (100/3) / 50 = 400/9, chess 0: mean 200/9)
    assert prof["icat"] == pytest.approx(350 / 9)
    assert prof["icat"] != pytest.approx(200 / 9)
    race = out["race"]
    assert (race["ss"], race["lms"], race["n_targets"]) == pytest.approx((50.0, 50.0, 1))
    # overall: macro over all three targets (bias-bench), not the mean of the domain figures
    overall = out["overall"]
    assert overall["n_items"] == 6 and overall["n_targets"] == 3
    assert overall["ss"] == pytest.approx((100 / 3 + 100 + 50) / 3)
    assert overall["lms"] == pytest.approx((400 / 6 + 50 + 50) / 3)
    assert overall["ss"] != pytest.approx((prof["ss"] + race["ss"]) / 2)
    assert list(out) == ["overall", "profession", "race"]


def test_stereoset_all_ties_count_as_anti():
    out = metrics.stereoset_metrics([0.5, 0.5], [0.5, 0.5], [0.5, 0.5], ["t", "t"], ["gender", "gender"])
    assert out["overall"]["ss"] == 0.0  # every tie is anti
    assert out["overall"]["lms"] == 0.0  # equal to the unrelated score is not "related"
    assert out["overall"]["icat"] == 0.0


def test_icat_ideal_and_extremes():
    assert metrics.icat(50.0, 100.0) == pytest.approx(100.0)
    assert metrics.icat(100.0, 100.0) == 0.0
    assert metrics.icat(30.0, 80.0) == pytest.approx(48.0)
    assert metrics.icat(70.0, 80.0) == pytest.approx(48.0)  # as far from 50 on the other side


def test_perplexity_from_nll_sum():
    assert metrics.perplexity(10.0, 5) == pytest.approx(7.3890561)  # e^2
    with pytest.raises(ValueError):
        metrics.perplexity(1.0, 0)


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(1)
    more, less = rng.normal(size=200), rng.normal(size=200)
    ci = metrics.bootstrap_pct_stereotype(more, less, 500, seed=0)
    assert ci == metrics.bootstrap_pct_stereotype(more, less, 500, seed=0)
    assert ci != metrics.bootstrap_pct_stereotype(more, less, 500, seed=1)
    point = float(np.mean(more > less))
    assert ci[0] < point < ci[1]
    # a constant statistic has a degenerate interval
    assert metrics.bootstrap_pct_stereotype([0.0] * 10, [-1.0] * 10, 100) == (1.0, 1.0)


def test_resampled_ss_and_lms_on_hand_picked_resamples():
    s, a, u, targets, _types = _toy_stereoset()
    idx = np.array([[0, 1, 2, 3, 4, 5],  # the full sample: SS (100/3 + 100 + 50) / 3 = 550/9
                    [0, 0, 0, 0, 0, 0],  # nurse's pro item only: 100
                    [3, 3, 4, 4, 5, 5]])  # chess 100, Iraq 2 of 4 pro = 50: (100 + 50) / 2
    assert metrics._resampled_ss(s, a, targets, idx) == pytest.approx([550 / 9, 100.0, 75.0])
    # related preferred / 2 per item: nurse 1/2, 1, 1/2 -> 200/3; chess 1/2 -> 50; Iraq 1, 0 -> 50
    assert metrics.resampled_lms(s, a, u, targets, idx) == pytest.approx([500 / 9, 50.0, (50 + 50) / 2])


def test_bootstrap_ss_is_seeded():
    s, a, _u, targets, _types = _toy_stereoset()
    ci = metrics.bootstrap_ss(s, a, targets, 300, seed=3)
    assert ci == metrics.bootstrap_ss(s, a, targets, 300, seed=3)
    assert 0.0 <= ci[0] <= ci[1] <= 100.0


def test_paired_bootstrap_differences():
    rng = np.random.default_rng(0)
    more, less = rng.normal(size=100), rng.normal(size=100)
    same = metrics.paired_diff_pct_stereotype(more, less, more, less, 200, seed=0)
    assert same == {"diff": 0.0, "ci": [0.0, 0.0], "n": 100}
    # A prefers sent_more on pairs 0 and 2 (1/2), B on 0, 1 and 2 (3/4): B - A = 1/4
    a_more, a_less = [-1.0, -3.0, -2.0, -5.0], [-2.0, -1.0, -4.0, -4.0]
    b_more, b_less = [-1.0, -1.0, -2.0, -5.0], [-2.0, -3.0, -4.0, -4.0]
    moved = metrics.paired_diff_pct_stereotype(a_more, a_less, b_more, b_less, 200, seed=0)
    assert moved["diff"] == pytest.approx(0.25) and moved["n"] == 4
    # per pair B - A is 0, 1, 0, 0: every resampled difference lies in [0, 1]
    assert 0.0 <= moved["ci"][0] <= 0.25 <= moved["ci"][1] <= 1.0

    s, a, _u, targets, _types = _toy_stereoset()
    ss_same = metrics.paired_diff_ss(s, a, s, a, targets, 200, seed=0)
    assert ss_same["diff"] == 0.0 and ss_same["ci"] == [0.0, 0.0]
    # B: every item pro-stereotype -> SS 100 on every resample
    ss_all = metrics.paired_diff_ss(s, a, [1.0] * 6, [0.0] * 6, targets, 200, seed=0)
    assert ss_all["diff"] == pytest.approx(100 - 550 / 9)  # A's SS is (100/3 + 100 + 50) / 3
    assert ss_all["ci"][0] <= ss_all["diff"] <= ss_all["ci"][1]


def test_bias_corrected_reflects_the_replicates_about_the_estimate():
    replicates = np.array([1.1, 1.2, 1.3, 1.4, 1.5])  # mean 1.3: the plug-in 1.0 is 0.3 below its replicates
    out = metrics.bias_corrected(1.0, np.append(replicates, np.nan))
    assert out["bias"] == pytest.approx(0.3) and out["estimate"] == pytest.approx(0.7)
    low, high = np.quantile(replicates, [0.025, 0.975])
    assert out["ci"] == pytest.approx([2.0 - high, 2.0 - low])


def test_bias_correction_removes_most_of_the_bias_of_a_norm_of_a_mean():
    # ‖mean of n draws‖² with true mean μ: the plug-in is biased up by tr(Σ)/n; the correction removes most of it
    rng = np.random.default_rng(0)
    mu, n, dims = np.array([0.3, 0.0, 0.0, 0.0]), 50, 4
    plug, corrected = [], []
    for trial in range(200):
        x = mu + rng.standard_normal((n, dims))
        idx = metrics.bootstrap_indices(n, 400, seed=trial)
        replicates = (x[idx].mean(axis=1) ** 2).sum(axis=1)
        estimate = float((x.mean(axis=0) ** 2).sum())
        plug.append(estimate)
        corrected.append(metrics.bias_corrected(estimate, replicates)["estimate"])
    truth = float((mu ** 2).sum())  # 0.09; the plug-in's expectation is 0.09 + 4/50 = 0.17
    assert abs(np.mean(plug) - truth) > 0.06
    assert abs(np.mean(corrected) - truth) < 0.02
