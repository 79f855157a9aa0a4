"""delta_w.jsonl's loss_vs_shifted_w / loss_vs_w (the 2.2.0 overlay's fields) in the 7.7.0 port.

Every expected value is computed here in float64 from what the test itself fed the task: H = (2/N) sum x x^T over
the real tokens (N counted here), W' from the closed form, dead columns and dampening written out. The task's Q
is an input (it is what 7.7.0 produced and what gets saved), never an expected value.
"""
import json
from pathlib import Path

import pytest
import torch
import transformers
from torch import nn

from gptqmodel.looper.named_module import NamedModule
from gptqmodel.quantization.config import Fallback, FallbackStrategy

from fair_gptq_v7 import FairGPTQConfig
from fair_gptq_v7.task import FairGPTQ
from task_helpers import COLS, feed, gptq_loss, padded_batches, reference_shift

ROWS = 12
ALPHA = 0.7


def make_task(tmp_path, kind="linear", ordering="natural", damp_percent=0.05, **cfg):
    torch.manual_seed(0)
    if kind == "linear":
        module = nn.Linear(COLS, ROWS, bias=False)
        W = module.weight.data.clone()
    else:  # transformers Conv1D: weight is [in, out]
        module = transformers.Conv1D(ROWS, COLS)
        nn.init.normal_(module.weight, std=0.2)
        W = module.weight.data.t().clone()
    named = NamedModule(module, name="mlp.fc", full_name="model.layers.0.mlp.fc", layer_index=0)
    qcfg = FairGPTQConfig(bits=4, group_size=8, desc_act=ordering == "desc_act",
                          act_group_aware=ordering == "act_group_aware", alpha=ALPHA, damp_percent=damp_percent,
                          log_delta_w=1, log_dir=str(tmp_path), **cfg)
    task = FairGPTQ(named, qcfg)
    task.quantizer.configure(perchannel=True)
    return task, W


def reference(W, batches, damp):
    """float64: N, H, W' (the shift with its own dampening, dead columns set to 1 first)."""
    N, H, _, shifted = reference_shift(W, batches, ALPHA, damp)
    return N, H, shifted


def run(task, batches):
    """Quantizes; returns Q in W's layout, 7.7.0's reported loss and damp, and the record."""
    feed(task, batches)
    Q, _, _, _, _, avg_loss, damp, nsamples = task.quantize()
    Q = Q.t() if isinstance(task.module, transformers.Conv1D) else Q
    lines = Path(task.qcfg.log_dir, "delta_w.jsonl").read_text().splitlines()
    assert len(lines) == 1
    return Q, avg_loss, damp, nsamples, json.loads(lines[0])


@pytest.mark.parametrize("kind,ordering", [("linear", "natural"), ("linear", "desc_act"),
                                           ("linear", "act_group_aware"), ("conv1d", "act_group_aware")])
def test_losses_match_float64_closed_form_and_the_reported_loss(tmp_path, kind, ordering):
    task, W = make_task(tmp_path, kind, ordering)
    batches = padded_batches()
    Q, avg_loss, damp, nsamples, record = run(task, batches)
    N, H, shifted = reference(W, batches, 0.05)
    assert N == 34 and nsamples == N and damp == 0.05  # tokens, padding removed; dampening not raised
    expected_shifted = gptq_loss(Q, shifted, H, damp, N)
    expected_w = gptq_loss(Q, W, H, damp, N)
    assert record["loss_vs_shifted_w"] == pytest.approx(expected_shifted, rel=1e-4)
    assert record["loss_vs_w"] == pytest.approx(expected_w, rel=1e-4)
    assert record["loss_vs_w"] > 10 * record["loss_vs_shifted_w"]  # the shift itself is part of the change from W
    # the relation pinned: 7.7.0's reported loss, sum_j (w_j - q_j)^2 / (2 d_j^2) / N, is the closed form
    # 1/2 tr((Q - W') H_d (Q - W')^T) / N in the same unit (no extra factor), whatever the column order
    assert avg_loss == pytest.approx(expected_shifted, rel=1e-4)


def test_dead_columns_are_neutralised_as_gptq_does(tmp_path):
    task, W = make_task(tmp_path)
    batches = padded_batches(seed=5, dead_column=3)
    Q, avg_loss, damp, nsamples, record = run(task, batches)
    N, H, shifted = reference(W, batches, 0.05)
    assert H[3, 3] == 0 and torch.all(Q[:, 3] == 0)  # GPTQ zeroed W's dead column before quantizing
    expected_w = gptq_loss(Q, W, H, damp, N)
    assert record["loss_vs_w"] == pytest.approx(expected_w, rel=1e-4)
    assert record["loss_vs_shifted_w"] == pytest.approx(gptq_loss(Q, shifted, H, damp, N), rel=1e-4)
    assert avg_loss == pytest.approx(record["loss_vs_shifted_w"], rel=1e-4)
    # the check can fail: keeping W's dead column (with H_d[3, 3] = 1 + damp mean) changes the loss
    E = Q.double() - W.double()
    H_d = H.clone()
    H_d[3, 3] = 1
    H_d += damp * torch.mean(torch.diag(H_d)) * torch.eye(COLS, dtype=torch.float64)
    assert 0.5 * torch.trace(E @ H_d @ E.t()).item() / N > 1.1 * expected_w


def test_losses_use_the_dampening_quantize_raised_to(tmp_path, monkeypatch):
    """The first Cholesky probe of 7.7.0's inverse fails: it recovers at damp 0.01 + 0.5 (its candidate grid)."""
    task, W = make_task(tmp_path, damp_percent=0.01, damp_auto_increment=0.5)
    original, real_cholesky_ex = task.hessian_inverse, torch.linalg.cholesky_ex
    probes = []

    def failing_first_probe(A, *args, **kwargs):
        L, info = real_cholesky_ex(A, *args, **kwargs)
        probes.append(1)
        return (L, torch.ones_like(info)) if len(probes) == 1 else (L, info)

    def hessian_inverse(H):  # only the parent's inverse sees the failing probe, not the shift's factorisation
        monkeypatch.setattr(torch.linalg, "cholesky_ex", failing_first_probe)
        try:
            return original(H)
        finally:
            monkeypatch.setattr(torch.linalg, "cholesky_ex", real_cholesky_ex)

    monkeypatch.setattr(task, "hessian_inverse", hessian_inverse)
    batches = padded_batches()
    Q, avg_loss, damp, nsamples, record = run(task, batches)
    assert len(probes) >= 2 and damp == 0.01 + 0.5
    N, H, shifted = reference(W, batches, 0.01)  # the shift keeps its own (unraised) dampening
    assert record["damp_percent"] == 0.01
    assert record["loss_vs_shifted_w"] == pytest.approx(gptq_loss(Q, shifted, H, 0.51, N), rel=1e-4)
    assert record["loss_vs_w"] == pytest.approx(gptq_loss(Q, W, H, 0.51, N), rel=1e-4)
    assert avg_loss == pytest.approx(gptq_loss(Q, shifted, H, 0.51, N), rel=1e-4)  # 7.7.0 reports H_d(0.51)
    assert gptq_loss(Q, shifted, H, 0.01, N) < 0.9 * record["loss_vs_shifted_w"]  # the configured damp differs


def test_rtn_fallback_records_no_gptq_loss(tmp_path):
    task, W = make_task(tmp_path)
    task.fallback = Fallback(strategy=FallbackStrategy.RTN, threshold=10**9)  # the module falls back
    Q, avg_loss, damp, nsamples, record = run(task, padded_batches())
    assert "fallback" in str(avg_loss)
    assert record["loss_vs_shifted_w"] is None and record["loss_vs_w"] is None
    assert record["relative_delta_w"] > 0
