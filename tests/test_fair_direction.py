"""fair_target="direction" / "random-direction": the rank-k bias term, checked against numpy float64 closed forms.

The reference (`reference_direction_shift`) is written from the formulas in gptq.py's header, in numpy, from the
hand-built batches: per pair the mean difference over the positions where the two rows differ, mu the mean of
those over pairs, the top k-1 left singular vectors of the deviations, trace(H01_dir) = alpha (4/n) ||D||_F^2.
"""
import json

import numpy as np
import pytest
import torch
from torch import nn

from gptqmodel.looper.named_module import NamedModule
from gptqmodel.quantization import GPTQ, QuantizeConfig

from quant_helpers import captured_shift, filled_gptq, load_upstream_module

ROWS, COLS, SEQ = 24, 32, 12
PLANTED = torch.tensor([1.0, -0.5, 0.25, 0.8] + [0.0] * (COLS - 4))


def named_linear(layer_index=0, name="mlp.fc", seed=0):
    torch.manual_seed(seed)
    linear = nn.Linear(COLS, ROWS, bias=False)
    return NamedModule(linear, name=name, full_name=f"model.layers.{layer_index}.{name}", layer_index=layer_index)


def differences(n_pairs, seed, noise=0.3):
    """[n_pairs, SEQ, COLS] stereotype - anti-stereotype: along PLANTED with a positive weight per position plus
    noise, and zero on a prefix of 2-5 positions (the shared start of the two sentences)."""
    g = torch.Generator().manual_seed(seed)
    weight = 0.5 + torch.rand(n_pairs, SEQ, 1, generator=g)
    diff = weight * PLANTED + noise * torch.randn(n_pairs, SEQ, COLS, generator=g)
    for pair in range(n_pairs):
        diff[pair, :2 + (pair + seed) % 4] = 0
    return diff


def paired_batch(diff, seed=100, flip=()):
    """Rows 2i (stereotype) = base + diff_i, 2i+1 (anti-stereotype) = base; the pairs in `flip` the other way."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(diff.shape, generator=g)
    rows = []
    for pair in range(diff.shape[0]):
        stereo, anti = base[pair] + diff[pair], base[pair]
        rows += [anti, stereo] if pair in flip else [stereo, anti]
    return torch.stack(rows)


def reference_pair_means(batches):
    """[P, COLS]: per pair, the mean of x_2i - x_2i+1 over the positions where the two rows differ."""
    means = []
    for a in (b.double().numpy() for b in batches):
        for pair in range(a.shape[0] // 2):
            d = a[2 * pair] - a[2 * pair + 1]
            differing = np.any(d != 0, axis=1)
            means.append(d[differing].mean(axis=0) if differing.any() else np.zeros(COLS))
    return np.array(means)


def reference_direction_shift(W, batches, alpha, rank, sum_hessians, damp_percent, frame=None):
    """W', H01_dir and the weights w_j in numpy float64, from the batches (3-D, rows 2i/2i+1 a pair)."""
    W = W.double().numpy()
    arrays = [b.double().numpy() for b in batches]
    X = np.concatenate([a.reshape(-1, COLS) for a in arrays])
    n = sum(a.shape[0] for a in arrays)
    H = 2 / n * X.T @ X
    means = reference_pair_means(batches)
    diff_energy = sum(np.sum((a[0::2] - a[1::2]) ** 2) for a in arrays)  # ||D||_F^2 over every position
    mu = means.mean(axis=0)
    directions, energies = [mu / np.linalg.norm(mu)], [len(means) * mu @ mu]
    if rank > 1:
        U, s, _ = np.linalg.svd((means - mu).T, full_matrices=False)
        directions += list(U[:, :rank - 1].T)
        energies += list(s[:rank - 1] ** 2)
    directions = np.array(directions).T if frame is None else frame
    weights = np.array(energies) / np.sum(energies)
    trace = alpha * 4 / n * diff_energy
    H01 = trace * (directions * weights) @ directions.T
    M = H + H01 if sum_hessians else H.copy()
    M += damp_percent * np.mean(np.diag(M)) * np.eye(COLS)
    return W - W @ H01 @ np.linalg.inv(M), H01, weights, M


def assert_matches_float32_solve(shifted, expected, W, M):
    """As in test_fair_gptq_math: the overlay solves in float32, so allow 10 cond(M) eps32 relative to the shift,
    and require that bound to stay far below the shift itself."""
    shift_norm = np.linalg.norm(W.double().numpy() - expected)
    tolerance = 10 * np.linalg.cond(M) * np.finfo(np.float32).eps * shift_norm
    assert tolerance < 0.01 * shift_norm, f"test data too ill-conditioned (cond {np.linalg.cond(M):.3g})"
    error = np.linalg.norm(shifted.double().numpy() - expected)
    assert error <= tolerance, f"|W' - expected| = {error:.3g} > {tolerance:.3g} (shift {shift_norm:.3g})"




BATCHES = [paired_batch(differences(3, seed=1), seed=11), paired_batch(differences(3, seed=2), seed=12)]


# ----------------------------------------------------------------------------- the shift

@pytest.mark.parametrize("rank, sum_hessians", [(1, 1), (1, 0), (2, 1), (3, 1), (3, 0)])
def test_shift_matches_float64_closed_form(rank, sum_hessians):
    module = named_linear()
    W = module.weight.data.clone()
    g = filled_gptq(module, BATCHES, alpha=0.7, fair_target="direction", fair_rank=rank, sum_hessians=sum_hessians)
    assert g.H01 is None  # the direction target keeps sums, not a columns x columns matrix, while accumulating
    expected, _, _, M = reference_direction_shift(W, BATCHES, 0.7, rank, sum_hessians, g.qcfg.damp_percent)
    assert_matches_float32_solve(captured_shift(g), expected, W, M)


@pytest.mark.parametrize("target", ["direction", "random-direction"])
@pytest.mark.parametrize("rank", [1, 2, 4])
def test_the_shift_has_rank_at_most_k(target, rank):
    module = named_linear()
    W = module.weight.data.clone()
    shifted = captured_shift(filled_gptq(module, BATCHES, alpha=2.0, fair_target=target, fair_rank=rank))
    singular = torch.linalg.svdvals((shifted - W).double())
    # beyond k only float32 rounding of W - dW (|W| ~ 0.1): far below the shift's own singular values
    assert singular[rank - 1] > 1e-2 * singular[0]
    assert singular[rank:].max() < 1e-4 * singular[0]


def test_trace_equals_that_of_the_pairs_term_on_the_same_pairs():
    module = named_linear()
    pairs = filled_gptq(module, BATCHES, alpha=0.7)
    for target, rank in [("direction", 1), ("direction", 3), ("random-direction", 2)]:
        h01 = filled_gptq(module, BATCHES, alpha=0.7, fair_target=target, fair_rank=rank)._fair_direction_h01()
        _, reference, _, _ = reference_direction_shift(module.weight.data, BATCHES, 0.7, 1, 1, 0.01)
        assert torch.trace(h01).item() == pytest.approx(np.trace(reference), rel=1e-5)
        assert torch.trace(h01).item() == pytest.approx(torch.trace(pairs.H01).item(), rel=1e-4)
        assert torch.linalg.matrix_rank(h01.double(), rtol=1e-5).item() == rank


def test_flattened_input_gets_the_same_shift_as_3d_input():
    """OPT's fc1/fc2 see (batch*seq, hidden); upstream counts such a batch as one sample in H, and the trace
    normalisation counts it the same way, so W' equals the one of the same data given in 3-D."""
    layer = 41
    cfg = QuantizeConfig(alpha=0.5, fair_target="direction", fair_rank=2, desc_act=False)
    attention = GPTQ(named_linear(layer_index=layer, name="self_attn.q_proj"), cfg)
    flat = GPTQ(named_linear(layer_index=layer, name="fc1"), cfg)
    for batch in BATCHES:
        attention.add_batch(batch, None)  # records (6, SEQ) for this layer and batch
        flat.add_batch(batch.reshape(-1, COLS), None)
    assert flat.n_pairs == 6 and flat.nsamples == 2
    expected, _, _, M = reference_direction_shift(flat.module_copy, BATCHES, 0.5, 2, 1, cfg.damp_percent)
    assert_matches_float32_solve(captured_shift(flat), expected, flat.module_copy, M)


# ----------------------------------------------------------------------------- the direction and its sign

def test_the_mean_difference_is_taken_over_the_positions_where_the_rows_differ():
    diff = differences(4, seed=3, noise=0.0)  # exactly weight * PLANTED after a zero prefix
    g = filled_gptq(named_linear(), [paired_batch(diff)], alpha=0.5, fair_target="direction")
    per_pair = [diff[p][diff[p].abs().sum(dim=1) > 0].double().mean(dim=0) for p in range(4)]
    known = torch.stack(per_pair).mean(dim=0)  # along PLANTED: no noise in these differences
    torch.testing.assert_close(g._fair_mean_sum / g.n_pairs, known, rtol=1e-5, atol=1e-6)
    over_all_positions = diff.double().mean(dim=(0, 1))  # the other convention: would not pass the check above
    assert not torch.allclose(over_all_positions, known, rtol=1e-2)


def test_order_contract_stereotype_first_gives_the_planted_sign():
    """Rows 2i are stereotypes: the mean of x_2i - x_2i+1 points along PLANTED; the same pairs given
    anti-stereotype first give the opposite mean (and, the term being quadratic, the same shift)."""
    diff = differences(4, seed=4, noise=0.0)
    ordered = filled_gptq(named_linear(), [paired_batch(diff)], alpha=0.5, fair_target="direction")
    reversed_ = filled_gptq(named_linear(), [paired_batch(diff, flip=range(4))], alpha=0.5, fair_target="direction")
    mean = ordered._fair_mean_sum / ordered.n_pairs
    cosine = torch.nn.functional.cosine_similarity(mean, PLANTED.double(), dim=0)
    assert cosine > 0.999
    torch.testing.assert_close(reversed_._fair_mean_sum, -ordered._fair_mean_sum, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(captured_shift(reversed_), captured_shift(ordered), rtol=1e-4, atol=1e-6)


def test_flipping_half_the_pairs_cancels_the_mean(tmp_path):
    """What --pairs sign-shuffled does: the signed mean shrinks to noise, visible in the log's mean_energy_fraction
    (the share of sum_p |m_p|^2 that lies in P |mu|^2)."""
    diff = differences(8, seed=5, noise=0.1)
    fractions = {}
    for name, flip in {"consistent": (), "half flipped": (0, 2, 5, 7)}.items():
        log_dir = tmp_path / name.replace(" ", "-")
        g = filled_gptq(named_linear(), [paired_batch(diff, flip=flip)], alpha=0.5, fair_target="direction",
                        log_delta_w=1, log_dir=str(log_dir))
        g.quantize()
        fractions[name] = json.loads((log_dir / "delta_w.jsonl").read_text())["mean_energy_fraction"]
    assert fractions["consistent"] > 0.9 and fractions["half flipped"] < 0.1


# ----------------------------------------------------------------------------- random directions (control)

def test_random_directions_are_seeded_per_module_and_norm_matched():
    module = named_linear()
    W = module.weight.data.clone()
    tasks = {key: filled_gptq(named_linear(name=key[0]), BATCHES, alpha=0.7, fair_target="random-direction",
                              fair_rank=2, fair_seed=key[1])
             for key in [("mlp.fc", 0), ("mlp.fc", 1), ("mlp.other", 0)]}
    again = filled_gptq(named_linear(), BATCHES, alpha=0.7, fair_target="random-direction", fair_rank=2)
    frames = {key: task._fair_random_frame(2) for key, task in tasks.items()}
    assert torch.equal(frames[("mlp.fc", 0)], again._fair_random_frame(2))
    assert not torch.allclose(frames[("mlp.fc", 0)], frames[("mlp.fc", 1)])
    assert not torch.allclose(frames[("mlp.fc", 0)], frames[("mlp.other", 0)])
    frame = frames[("mlp.fc", 0)].numpy()
    np.testing.assert_allclose(frame.T @ frame, np.eye(2), atol=1e-12)
    mu_direction = PLANTED.double().numpy() / PLANTED.norm().item()
    assert np.abs(mu_direction @ frame).max() < 0.6  # unrelated to the planted bias direction (1/sqrt(32) typical)

    expected, H01, weights, M = reference_direction_shift(W, BATCHES, 0.7, 2, 1, 0.01, frame=frame)
    h01 = tasks[("mlp.fc", 0)]._fair_direction_h01().double().numpy()
    # the same weights as the signed directions, on orthonormal random ones: eigenvalues trace * w_j
    _, direction_h01, _, _ = reference_direction_shift(W, BATCHES, 0.7, 2, 1, 0.01)
    eigen = np.sort(np.linalg.eigvalsh(h01))[::-1][:2]
    np.testing.assert_allclose(eigen, np.sort(np.trace(direction_h01) * weights)[::-1], rtol=1e-5)
    assert_matches_float32_solve(captured_shift(again), expected, W, M)


# ----------------------------------------------------------------------------- off means off

@pytest.fixture(scope="module")
def upstream_gptq():
    return load_upstream_module("gptq").GPTQ


@pytest.mark.parametrize("fair", [dict(alpha=0.0, fair_target="direction", fair_rank=2),
                                  dict(alpha=0.5, fair_target="random-direction", ignore_bias="fc", fair_seed=3)])
def test_inactive_direction_settings_quantize_bit_identically_to_upstream(upstream_gptq, fair):
    results = []
    for cls, cfg in ((GPTQ, fair), (upstream_gptq, {})):
        task = cls(named_linear(), QuantizeConfig(desc_act=True, group_size=16, **cfg))
        task.quantizer.configure(perchannel=True)
        for batch in BATCHES:
            task.add_batch(batch, None)
        if cls is GPTQ:
            assert not task.fair_active
        results.append(task.quantize())
    ours, theirs = results
    for a, b in zip(ours[:4], theirs[:4]):  # Q, scale, zero, g_idx
        assert torch.equal(a, b)
    assert ours[5] == theirs[5]  # avg loss


# ----------------------------------------------------------------------------- configuration

@pytest.mark.parametrize("kwargs, message", [
    (dict(fair_target="Direction"), r"`fair_target` must be one of 'pairs', 'direction', 'random-direction', "
                                    r"got 'Direction'"),
    (dict(fair_target=None), r"`fair_target` must be one of .*got None"),
    (dict(fair_target="direction", fair_rank=0), r"`fair_rank` must be an integer >= 1, got 0"),
    (dict(fair_target="direction", fair_rank=1.5), r"`fair_rank` must be an integer >= 1, got 1.5"),
    (dict(fair_target="direction", fair_rank=True), r"`fair_rank` must be an integer >= 1, got True"),
    (dict(fair_target="direction", fair_rank="2"), r"`fair_rank` must be an integer >= 1, got '2'"),
    (dict(fair_rank=2), r"`fair_rank` = 2 applies to fair_target 'direction' or 'random-direction' only; with "
                        r"fair_target 'pairs' it must be 1"),
    (dict(fair_target="random-direction", fair_seed=-1), r"`fair_seed` must be an integer >= 0, got -1"),
    (dict(fair_target="random-direction", fair_seed=2.0), r"`fair_seed` must be an integer >= 0, got 2.0"),
    (dict(fair_target="direction", fair_seed=3), r"`fair_seed` = 3 is used by fair_target 'random-direction' only"),
    (dict(dynamic={r".*fc2": {"fair_target": "mean"}}), r"`fair_target` must be one of .*got 'mean' in `dynamic` "
                                                          r"rule '\.\*fc2'\.$"),
    (dict(fair_target="direction", fair_rank=3, dynamic={r".*fc2": {"fair_target": "pairs"}}),
     r"`fair_rank` = 3 applies to .* must be 1 in `dynamic` rule '\.\*fc2'\.$"),
    (dict(dynamic={r".*fc2": {"fair_seed": 1}}), r"`fair_seed` applies to the whole run"),
])
def test_bad_values_are_refused_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantizeConfig(alpha=0.1, **kwargs)


def test_numpy_integers_are_accepted_and_saved_as_int():
    cfg = QuantizeConfig(alpha=0.1, fair_target="random-direction", fair_rank=np.int64(3), fair_seed=np.int32(7))
    assert (cfg.fair_rank, cfg.fair_seed) == (3, 7) and type(cfg.fair_rank) is int and type(cfg.fair_seed) is int


def test_dynamic_rules_set_target_and_rank_per_module():
    cfg = QuantizeConfig(alpha=0.3, dynamic={r".*\.fc2$": {"fair_target": "direction", "fair_rank": np.int64(2)},
                                             r".*\.out_proj$": {"fair_target": "random-direction"}})
    name = "model.layers.0.{}".format
    assert cfg.dynamic[r".*\.fc2$"] == {"fair_target": "direction", "fair_rank": 2}
    assert [(cfg.fair_settings_for(name(m))["fair_target"], cfg.fair_settings_for(name(m))["fair_rank"])
            for m in ("fc2", "out_proj", "fc1")] == [("direction", 2), ("random-direction", 1), ("pairs", 1)]
    module = named_linear(name="fc2")
    W = module.weight.data.clone()
    fc2 = filled_gptq(module, BATCHES, **{k: v for k, v in vars(cfg).items() if k in ("alpha", "dynamic")})
    fc1 = filled_gptq(named_linear(name="fc1"), BATCHES, alpha=0.3, dynamic=cfg.dynamic)
    assert (fc2.fair_target, fc2.fair_rank, fc2.H01) == ("direction", 2, None)
    assert fc1.fair_target == "pairs" and fc1.H01 is not None  # the rule-less module keeps today's term
    expected, _, _, M = reference_direction_shift(W, BATCHES, 0.3, 2, 1, 0.01)
    assert_matches_float32_solve(captured_shift(fc2), expected, W, M)
    back_to_pairs = QuantizeConfig(alpha=0.3, fair_target="direction", fair_rank=3,
                                   dynamic={r".*\.fc1$": {"fair_target": "pairs", "fair_rank": 1}})
    assert back_to_pairs.fair_settings_for(name("fc1"))["fair_target"] == "pairs"


def test_fields_are_saved_with_the_term_only_and_load_with_stock_config(tmp_path):
    stock = load_upstream_module("config")
    cfg = QuantizeConfig(bits=4, group_size=32, alpha=0.25, fair_target="random-direction", fair_rank=2, fair_seed=9,
                         dynamic={r".*fc2": {"fair_target": "direction", "fair_rank": 4}})
    cfg.save_pretrained(str(tmp_path))
    saved = json.loads((tmp_path / "quantize_config.json").read_text())
    assert (saved["fair_target"], saved["fair_rank"], saved["fair_seed"]) == ("random-direction", 2, 9)
    assert saved["dynamic"] == {r".*fc2": {"fair_target": "direction", "fair_rank": 4}}
    restored = QuantizeConfig.from_pretrained(str(tmp_path))
    assert restored.fair_gptq_dict() == cfg.fair_gptq_dict() and restored.dynamic == cfg.dynamic
    loaded = stock.QuantizeConfig.from_pretrained(str(tmp_path))
    assert (loaded.bits, loaded.group_size) == (4, 32) and not hasattr(loaded, "fair_target")
    off = QuantizeConfig(bits=4, alpha=0.0, fair_target="direction", fair_rank=2).to_dict()
    assert not {"fair_target", "fair_rank", "fair_seed"} & set(off)


def test_the_log_record_names_the_target_and_its_weights(tmp_path):
    module = named_linear()
    W = module.weight.data.clone()
    g = filled_gptq(module, BATCHES, alpha=0.7, fair_target="direction", fair_rank=3, log_delta_w=1,
                    log_dir=str(tmp_path))
    g.quantize()
    record = json.loads((tmp_path / "delta_w.jsonl").read_text())
    expected, _, weights, _ = reference_direction_shift(W, BATCHES, 0.7, 3, 1, 0.01)
    assert (record["fair_target"], record["fair_rank"], record["n_pairs"]) == ("direction", 3, 6)
    np.testing.assert_allclose(record["direction_weights"], weights, rtol=1e-6)
    means = reference_pair_means(BATCHES)
    fraction = len(means) * np.sum(means.mean(axis=0) ** 2) / np.sum(means ** 2)  # P |mu|^2 / sum_p |m_p|^2
    assert record["mean_energy_fraction"] == pytest.approx(fraction, rel=1e-6)
    assert record["delta_w_fro"] == pytest.approx(np.linalg.norm(W.double().numpy() - expected), rel=1e-3)
