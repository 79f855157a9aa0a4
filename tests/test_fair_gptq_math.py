"""Fair-GPTQ's math on one nn.Linear, checked against independent float64 computations."""
import json

import pytest
import torch
from torch import nn

from gptqmodel.looper.named_module import NamedModule
from gptqmodel.quantization import GPTQ, QuantizeConfig

from quant_helpers import captured_shift, filled_gptq

ROWS, COLS, SEQ = 24, 32, 12


def named_linear(layer_index=0, name="mlp.fc", seed=0):
    torch.manual_seed(seed)
    linear = nn.Linear(COLS, ROWS, bias=False)
    return NamedModule(linear, name=name, full_name=f"model.layers.{layer_index}.{name}", layer_index=layer_index)


def paired_inputs(n_pairs, seed=1, bias_strength=4.0):
    """(2*n_pairs, SEQ, COLS) batch: rows 2i / 2i+1 share their content and differ along one planted direction."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.zeros(COLS)
    direction[:4] = torch.tensor([1.0, -0.5, 0.25, 0.8])
    base = torch.randn(n_pairs, SEQ, COLS, generator=g)
    signs = torch.randn(n_pairs, SEQ, 1, generator=g)
    stereo = base + bias_strength * signs * direction
    anti = base - bias_strength * signs * direction + 0.05 * torch.randn(n_pairs, SEQ, COLS, generator=g)
    return torch.stack([stereo, anti], dim=1).reshape(2 * n_pairs, SEQ, COLS)


def reference_shift(W, batches, alpha, sum_hessians, damp_percent):
    """W' in float64 from the formulas, with upstream's dampening of the inverted matrix."""
    W = W.double()
    X = torch.cat([b.reshape(-1, COLS) for b in batches]).double()
    n = sum(b.shape[0] for b in batches)
    deltas = torch.cat([(b[0::2] - b[1::2]).reshape(-1, COLS) for b in batches]).double()
    n_pairs = n // 2
    H = 2 / n * X.t() @ X
    H01 = alpha * 2 / n_pairs * deltas.t() @ deltas
    return W - W @ H01 @ torch.linalg.inv(damped_matrix(H, H01, sum_hessians, damp_percent)), H, H01


def damped_matrix(H, H01, sum_hessians, damp_percent):
    """The matrix the shift inverts: H + H01 (sum_hessians=1) or H, plus upstream's dampening."""
    M = H + H01 if sum_hessians else H.clone()
    return M + damp_percent * torch.mean(torch.diag(M)) * torch.eye(M.shape[0], dtype=M.dtype)


def assert_matches_float32_solve(shifted, expected, W, M):
    """The overlay accumulates and inverts M in float32, so W' carries a forward error of order cond(M)·eps32
    relative to the shift W - W'; a fixed elementwise tolerance fails on some CPUs' BLAS. Allow ten times that
    bound, and require the bound to stay far below the shift itself, so a wrong formula cannot pass."""
    shift_norm = torch.linalg.norm(W.double() - expected)
    tolerance = 10 * torch.linalg.cond(M) * torch.finfo(torch.float32).eps * shift_norm
    assert tolerance < 0.01 * shift_norm, f"test data too ill-conditioned to check the shift (cond {torch.linalg.cond(M):.3g})"
    error = torch.linalg.norm(shifted.double() - expected)
    assert error <= tolerance, f"|W' - expected| = {error:.3g} > {tolerance:.3g} (shift {shift_norm:.3g})"




@pytest.mark.parametrize("sum_hessians", [1, 0])
def test_shift_matches_float64_closed_form(sum_hessians):
    module = named_linear()
    batches = [paired_inputs(2, seed=1), paired_inputs(2, seed=2)]
    g = filled_gptq(module, batches, alpha=0.7, sum_hessians=sum_hessians)
    expected, H, H01 = reference_shift(module.weight.data, batches, 0.7, sum_hessians, g.qcfg.damp_percent)
    shifted = captured_shift(g)
    assert not torch.allclose(expected.float(), module.weight.data, atol=1e-3)  # the shift is not a no-op
    M = damped_matrix(H, H01, sum_hessians, g.qcfg.damp_percent)
    assert_matches_float32_solve(shifted, expected, module.weight.data, M)


def test_exact_form_is_the_minimiser_of_the_fair_objective():
    module = named_linear()
    batches = [paired_inputs(3)]
    alpha = 0.5
    g = filled_gptq(module, batches, alpha=alpha, damp_percent=1e-6, damp_auto_increment=0.0)
    shifted = captured_shift(g).double()
    W = module.weight.data.double()
    _, H, H01 = reference_shift(W, batches, alpha, 1, 1e-6)
    # gradient of tr((W'-W) H (W'-W)^T) + tr(W' H01 W'^T) vanishes at the minimiser
    gradient = (shifted - W) @ H + shifted @ H01
    assert gradient.abs().max() < 1e-4 * (W @ H).abs().max()


def test_8bit_quantization_lands_close_to_the_shifted_weights():
    module = named_linear()
    batches = [paired_inputs(4)]
    W = module.weight.data.clone()
    expected, _, _ = reference_shift(W, batches, 1.0, 1, 0.01)
    g = filled_gptq(module, batches, bits=8, alpha=1.0)
    Q = g.quantize()[0].double()
    shift = torch.linalg.norm(expected - W.double())
    assert torch.linalg.norm(Q - expected) < 0.05 * shift
    assert torch.linalg.norm(Q - W.double()) > 0.5 * shift


def fair_objective_terms(Q, W, batches):
    X = torch.cat([b.reshape(-1, COLS) for b in batches]).double()
    D = torch.cat([(b[0::2] - b[1::2]).reshape(-1, COLS) for b in batches]).double()
    Q, W = Q.double(), W.double()
    return torch.sum(((Q - W) @ X.t()) ** 2).item(), torch.sum((Q @ D.t()) ** 2).item(), torch.sum((W @ D.t()) ** 2).item()


def test_fair_quantization_lowers_the_bias_term_at_bounded_reconstruction_cost():
    batches = [paired_inputs(4, seed=s) for s in range(3)]
    W = named_linear().weight.data.clone()
    alpha = 0.3
    q_plain = filled_gptq(named_linear(), batches, alpha=0.0).quantize()[0]
    q_fair = filled_gptq(named_linear(), batches, alpha=alpha).quantize()[0]
    recon_plain, bias_plain, bias_fp = fair_objective_terms(q_plain, W, batches)
    recon_fair, bias_fair, _ = fair_objective_terms(q_fair, W, batches)
    assert bias_fair < 0.5 * bias_plain
    # The shift alone costs at most what it removes: ||(W'-W)X||^2 <= alpha n/n_pairs ||W D||^2 (objective at W'
    # is below the objective at W); quantization noise comes on top of that.
    n_rows, n_pairs = sum(b.shape[0] for b in batches), sum(b.shape[0] for b in batches) // 2
    shift_budget = alpha * n_rows / n_pairs * bias_fp
    assert recon_fair <= recon_plain + shift_budget
    assert recon_fair > recon_plain  # moving towards less bias is not free


def test_batch_of_four_and_two_batches_of_two_give_the_same_h01():
    batch4 = paired_inputs(2, seed=5)
    g4 = filled_gptq(named_linear(), [batch4], alpha=0.2)
    g2 = filled_gptq(named_linear(), [batch4[:2], batch4[2:]], alpha=0.2)
    assert g4.n_pairs == g2.n_pairs == 2
    torch.testing.assert_close(g4.H01, g2.H01, rtol=1e-5, atol=1e-6)
    _, _, H01 = reference_shift(torch.zeros(ROWS, COLS), [batch4], 0.2, 1, 0.01)
    torch.testing.assert_close(g4.H01.double(), H01, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch_pairs", [1, 2, 4])
def test_flattened_input_gets_the_same_shift_as_3d_input(batch_pairs):
    """OPT's fc1/fc2 see (batch*seq, hidden): the pairs come from the layer's 3-D shape, and although upstream
    counts such a batch as one sample in H, the shift W' must equal the one of the same data given in 3-D."""
    batches = [paired_inputs(batch_pairs, seed=7 + i) for i in range(2)]
    layer = 11 + batch_pairs
    cfg = QuantizeConfig(alpha=0.5, desc_act=False)
    attention = GPTQ(named_linear(layer_index=layer, name="self_attn.q_proj"), cfg)
    flat = GPTQ(named_linear(layer_index=layer, name="fc1"), cfg)
    reference = GPTQ(named_linear(layer_index=layer, name="fc1"), cfg)
    for batch in batches:
        attention.add_batch(batch, None)  # records (2*batch_pairs, SEQ) for this layer and batch
        flat.add_batch(batch.reshape(-1, COLS), None)
        reference.add_batch(batch, None)
    assert flat.n_pairs == reference.n_pairs == 2 * batch_pairs
    # H and H01 are both `batch size` times larger for the flattened layout; their ratio is what matters
    torch.testing.assert_close(flat.H01, reference.H01 * 2 * batch_pairs, rtol=1e-5, atol=1e-4)
    expected, H, H01 = reference_shift(flat.module_copy, batches, 0.5, 1, cfg.damp_percent)
    M = damped_matrix(H, H01, 1, cfg.damp_percent)
    assert_matches_float32_solve(captured_shift(flat), expected, flat.module_copy, M)


def test_odd_batch_is_rejected_with_the_module_name():
    g = GPTQ(named_linear(), QuantizeConfig(alpha=0.1))
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.fc.*3 sequences.*even"):
        g.add_batch(torch.randn(3, SEQ, COLS), None)


def test_unsplittable_flat_input_is_rejected():
    g = GPTQ(named_linear(layer_index=97, name="fc2"), QuantizeConfig(alpha=0.1))
    with pytest.raises(ValueError, match=r"fc2.*\(24, 32\).*never seen"):
        g.add_batch(torch.randn(24, COLS), None)
    sibling = GPTQ(named_linear(layer_index=98, name="q_proj"), QuantizeConfig(alpha=0.1))
    sibling.add_batch(torch.randn(2, 6, COLS), None)
    mismatched = GPTQ(named_linear(layer_index=98, name="fc2"), QuantizeConfig(alpha=0.1))
    with pytest.raises(ValueError, match=r"\(14, 32\).*batch=2, seq=6"):
        mismatched.add_batch(torch.randn(14, COLS), None)


def test_inactive_module_allocates_nothing_and_ignores_odd_batches():
    ignored = GPTQ(named_linear(name="self_attn.q_proj"), QuantizeConfig(alpha=0.1, ignore_bias="q_proj"))
    ignored.add_batch(torch.randn(3, SEQ, COLS), None)
    assert not ignored.fair_active and ignored.H01 is None
    unselected = GPTQ(named_linear(layer_index=4), QuantizeConfig(alpha=0.1, select_layer="0-3"))
    assert not unselected.fair_active
    plain_module = GPTQ(nn.Linear(COLS, ROWS), QuantizeConfig(alpha=0.1))  # HF-optimum path: no names, no term
    assert not plain_module.fair_active


def test_logs_are_written_only_when_asked(tmp_path):
    batches = [paired_inputs(2)]
    filled_gptq(named_linear(), batches, alpha=0.5, log_dir=str(tmp_path / "off")).quantize()
    assert not (tmp_path / "off").exists()

    module = named_linear()
    W = module.weight.data.clone()
    g = filled_gptq(module, batches, alpha=0.5, log_delta_w=1, log_hessian_sensitivity=1, log_dir=str(tmp_path / "on"))
    expected, _, H01 = reference_shift(W, batches, 0.5, 1, 0.01)
    Q = g.quantize()[0]
    record = json.loads((tmp_path / "on" / "delta_w.jsonl").read_text().splitlines()[0])
    assert record["module"] == "model.layers.0.mlp.fc" and record["layer_index"] == 0 and record["alpha"] == 0.5
    delta = torch.linalg.norm(expected - W.double()).item()
    assert record["delta_w_fro"] == pytest.approx(delta, rel=1e-3)
    assert record["relative_delta_w"] == pytest.approx(delta / torch.linalg.norm(W).item(), rel=1e-3)

    lines = (tmp_path / "on" / "hessian_sensitivity" / "model.layers.0.mlp.fc.csv").read_text().splitlines()
    assert "n_pairs" in record and record["n_pairs"] == 2
    assert lines[0] == "column,h01_diag,weight_error_l2,sensitivity" and len(lines) == COLS + 1
    rows = [line.split(",") for line in lines[1:]]
    values = [float(r[3]) for r in rows]
    assert values == sorted(values, reverse=True) and values[0] > 0  # measured after quantization: not zero
    expected_sens = torch.diag(H01) * torch.linalg.norm(expected - Q.double(), dim=0)
    for column, _, _, value in rows[:5]:
        assert float(value) == pytest.approx(expected_sens[int(column)].item(), rel=1e-2, abs=1e-4)


def test_dead_columns_have_no_sensitivity_error(tmp_path):
    batch = paired_inputs(2)
    batch[..., 5] = 0  # column 5 never sees input: GPTQ zeroes it in W'
    g = filled_gptq(named_linear(), [batch], alpha=0.5, log_hessian_sensitivity=1, log_dir=str(tmp_path))
    g.quantize()
    rows = {r.split(",")[0]: r.split(",") for r in
            (tmp_path / "hessian_sensitivity" / "model.layers.0.mlp.fc.csv").read_text().splitlines()[1:]}
    assert float(rows["5"][1]) == 0 and float(rows["5"][2]) == 0


def test_lm_head_never_gets_the_term():
    lm_head = NamedModule(nn.Linear(COLS, ROWS), name="lm_head", full_name="lm_head", layer_index=4)
    assert not GPTQ(lm_head, QuantizeConfig(alpha=0.5)).fair_active


# ----------------------------------------------------------------------------- out of memory

def test_h01_allocation_retries_after_emptying_the_cache_like_h(monkeypatch):
    import gptqmodel.quantization.gptq as overlay
    batches = [paired_inputs(2)]
    real_zeros, calls, emptied = torch.zeros, [], []

    def zeros_failing_once(*args, **kwargs):
        if args == ((COLS, COLS),):
            calls.append(args)
            if len(calls) == 1:  # the first columns x columns allocation of process_batch is H01's (H's follows)
                raise torch.OutOfMemoryError("forced for the test")
        return real_zeros(*args, **kwargs)

    monkeypatch.setattr(torch, "zeros", zeros_failing_once)
    monkeypatch.setattr(overlay, "torch_empty_cache", lambda *a, **k: emptied.append(True))
    g = filled_gptq(named_linear(), batches, alpha=0.4)
    monkeypatch.undo()
    assert len(calls) == 3 and emptied == [True]  # H01 failed, H01 retried, H
    _, _, H01 = reference_shift(torch.zeros(ROWS, COLS), batches, 0.4, 1, 0.01)
    torch.testing.assert_close(g.H01.double(), H01, rtol=1e-5, atol=1e-5)


def test_h01_accumulation_falls_back_to_the_cpu_without_losing_or_repeating_a_pair(monkeypatch):
    """OOM at the second of three pairs: that pair and the rest are added on the CPU, each exactly once."""
    import gptqmodel.quantization.gptq as overlay
    batches = [paired_inputs(3, seed=11), paired_inputs(3, seed=12)]
    real_add, calls, emptied = GPTQ._fair_add_pair, [], []

    def add_failing_once(self, sequences, pair, scale):
        calls.append((pair, sequences.device.type, self.H01.device.type))
        if len(calls) == 2:
            raise torch.OutOfMemoryError("forced for the test")
        return real_add(self, sequences, pair, scale)

    monkeypatch.setattr(GPTQ, "_fair_add_pair", add_failing_once)
    monkeypatch.setattr(overlay, "torch_empty_cache", lambda *a, **k: emptied.append(True))
    g = filled_gptq(named_linear(), batches, alpha=0.4)
    assert [pair for pair, _, _ in calls] == [0, 1, 1, 2, 0, 1, 2] and emptied == [True]
    assert all(device == "cpu" for _, seq_device, h01_device in calls[2:4] for device in (seq_device, h01_device))
    assert g.H01.device == g.device and g.n_pairs == 6
    _, _, H01 = reference_shift(torch.zeros(ROWS, COLS), batches, 0.4, 1, 0.01)
    torch.testing.assert_close(g.H01.double(), H01, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- the shift's dampening

def small_task(**cfg):
    linear = NamedModule(nn.Linear(4, 3), name="fc", full_name="model.layers.0.fc", layer_index=0)
    return GPTQ(linear, QuantizeConfig(alpha=0.1, **cfg))


def test_dampening_is_raised_until_the_factorisation_succeeds():
    """Worked by hand: diag(1, 1, 1, -0.1), damp_percent 0.1, increment 0.1.
    Try 1: mean diag 0.725, +0.0725 each -> last entry -0.0275, fails. Try 2 (0.2): mean diag 0.7975, +0.1595
    -> diag(1.232, 1.232, 1.232, 0.132), positive definite."""
    g = small_task(damp_percent=0.1, damp_auto_increment=0.1)
    L, damp_percent = g._fair_damped_cholesky(torch.diag(torch.tensor([1.0, 1.0, 1.0, -0.1])))
    assert damp_percent == pytest.approx(0.2)
    torch.testing.assert_close(L @ L.t(), torch.diag(torch.tensor([1.232, 1.232, 1.232, 0.132])))


def test_dampening_that_may_not_be_raised_fails_with_the_module_name():
    g = small_task(damp_percent=0.1, damp_auto_increment=0.0)
    with pytest.raises(ValueError, match=r"`model\.layers\.0\.fc` is not positive definite at damp_percent=0\.10000"):
        g._fair_damped_cholesky(torch.diag(torch.tensor([1.0, 1.0, 1.0, -0.1])))


def test_dampening_raised_to_one_fails():
    g = small_task(damp_percent=0.1, damp_auto_increment=0.3)  # 0.1, 0.4, 0.7, then 1.0 stops the loop
    with pytest.raises(ValueError, match=r"`damp_percent` must be between 0 and 1 for `model\.layers\.0\.fc`"):
        g._fair_damped_cholesky(torch.diag(torch.tensor([1.0, 1.0, 1.0, -2.0])))


# ----------------------------------------------------------------------------- the loss and the run id in the log

def gptq_loss_float64(Q, W, H, damp_percent, nsamples):
    """GPTQ's loss from its definition: 1/2 tr((Q - W) H_d (Q - W)^T) / nsamples, H_d = H + damp mean(diag H) I."""
    H_d = H + damp_percent * torch.mean(torch.diag(H)) * torch.eye(H.shape[0], dtype=torch.float64)
    E = Q.double() - W.double()
    return 0.5 * torch.trace(E @ H_d @ E.t()).item() / nsamples


def test_log_records_the_loss_against_w_and_against_w_prime(tmp_path):
    batches = [paired_inputs(2, seed=3), paired_inputs(2, seed=4)]
    module = named_linear()
    W = module.weight.data.clone()
    g = filled_gptq(module, batches, alpha=0.5, log_delta_w=1, log_dir=str(tmp_path), log_run_id="run-a")
    Q, _, _, _, _, avg_loss, damp_percent, nsamples = g.quantize()
    shifted, H, _ = reference_shift(W, batches, 0.5, 1, g.qcfg.damp_percent)
    record = json.loads((tmp_path / "delta_w.jsonl").read_text())
    assert record["run_id"] == "run-a" and nsamples == 8
    # the printed loss is GPTQ's loss against W' ...
    assert record["loss_vs_shifted_w"] == avg_loss
    assert avg_loss == pytest.approx(gptq_loss_float64(Q, shifted, H, damp_percent, nsamples), rel=1e-3)
    # ... and the record adds the same quantity against W, which is what a stock run reports
    expected = gptq_loss_float64(Q, W, H, damp_percent, nsamples)
    assert record["loss_vs_w"] == pytest.approx(expected, rel=1e-3)
    assert record["loss_vs_w"] > 2 * record["loss_vs_shifted_w"]  # the shift itself is part of the change from W


def test_the_loss_notice_is_logged_once_per_run(monkeypatch):
    import gptqmodel.quantization.gptq as overlay
    notes = []
    monkeypatch.setattr(overlay.log, "info", lambda message, *a, **k: notes.append(message))
    cfg = dict(alpha=0.5, desc_act=False, group_size=-1)
    for run_id in ("run-b", "run-b", "run-c"):
        g = GPTQ(named_linear(), QuantizeConfig(log_run_id=run_id, **cfg))
        g.quantizer.configure(perchannel=True)
        g.add_batch(paired_inputs(1), None)
        g.quantize()
    assert sum("measured against the shifted weights W'" in note for note in notes) == 2


# ----------------------------------------------------------------------------- fair_accumulate="sum-difference"


@pytest.mark.parametrize("layout", ["3d", "flat"])
def test_sum_difference_accumulation_gives_upstreams_h_and_the_same_h01(layout):
    """H from pair sums and differences equals upstream's direct H (float32 rounding only), H01 the per-pair one;
    checked against float64 sums of X X^T and D D^T, for 3-D and flattened (OPT fc1/fc2) inputs."""
    batches = [paired_inputs(2, seed=21 + i) for i in range(3)]
    layer = {"3d": 40, "flat": 41}[layout]
    gs = {}
    for mode in ("direct", "sum-difference"):
        cfg = QuantizeConfig(alpha=0.3, desc_act=False, fair_accumulate=mode)
        sibling = GPTQ(named_linear(layer_index=layer, name="self_attn.q_proj"), cfg)
        g = GPTQ(named_linear(layer_index=layer, name="fc1" if layout == "flat" else "mlp.fc"), cfg)
        for batch in batches:
            sibling.add_batch(batch, None)  # records the 3-D shape a flattened sibling pairs its rows by
            g.add_batch(batch.reshape(-1, COLS) if layout == "flat" else batch, None)
        gs[mode] = g
    direct, summed = gs["direct"], gs["sum-difference"]
    assert not hasattr(summed, "H") and summed.H01 is None  # unscaled sums until the shift finishes them
    summed._fair_finish_sum_difference()
    assert summed.nsamples == direct.nsamples and summed.n_pairs == direct.n_pairs == 6
    X = torch.cat([b.reshape(-1, COLS) for b in batches]).double()
    D = torch.cat([(b[0::2] - b[1::2]).reshape(-1, COLS) for b in batches]).double()
    n = direct.nsamples  # upstream's count: 12 sequences (3-D) or 3 batches (flattened)
    H = 2 / n * X.t() @ X
    H01 = 0.3 * 2 / (n / 2) * D.t() @ D
    eps = torch.finfo(torch.float32).eps
    for g in (direct, summed):
        # each entry sums len(X) products: a float32 error bound of a few eps times the sum of |products|
        bound = 8 * eps * X.shape[0] * (2 / n) * (X.abs().t() @ X.abs())
        assert ((g.H.double() - H).abs() <= bound + 1e-12).all()
        torch.testing.assert_close(g.H01.double(), H01, rtol=1e-5, atol=1e-5)
    if layout == "3d":  # and the shift built from them matches the float64 closed form
        expected, H64, H01_64 = reference_shift(summed.module_copy, batches, 0.3, 1, summed.qcfg.damp_percent)
        M = damped_matrix(H64, H01_64, 1, summed.qcfg.damp_percent)
        assert_matches_float32_solve(captured_shift(summed), expected, summed.module_copy, M)


def test_sum_difference_is_refused_where_it_cannot_apply_and_default_is_direct():
    assert QuantizeConfig(alpha=0.1).fair_accumulate == "direct"
    with pytest.raises(ValueError, match="fair_accumulate"):
        QuantizeConfig(alpha=0.1, fair_accumulate="fast")
    with pytest.raises(ValueError, match="fair_accumulate.*'pairs' only"):
        QuantizeConfig(alpha=0.1, fair_target="direction", fair_accumulate="sum-difference")


def test_inactive_modules_keep_upstreams_h_bit_for_bit_with_sum_difference():
    batch = paired_inputs(2, seed=3)
    plain = filled_gptq(named_linear(), [batch], alpha=0.0)
    ignored = filled_gptq(named_linear(), [batch], alpha=0.5, ignore_bias="fc", fair_accumulate="sum-difference")
    assert torch.equal(plain.H, ignored.H) and ignored.H01 is None
