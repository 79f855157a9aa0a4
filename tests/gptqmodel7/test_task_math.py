"""FairGPTQ (one task, one nn.Linear) against float64 closed forms written out here."""
import json

import pytest
import torch
from torch import nn

from gptqmodel.looper.named_module import NamedModule
from gptqmodel.quantization.config import Fallback, FallbackStrategy

from fair_gptq_v7 import FairGPTQConfig
from fair_gptq_v7.task import FairGPTQ
from task_helpers import COLS, feed, padded_batches, reference_shift

ROWS = 12


def make_task(alpha=0.7, sum_hessians=1, name="mlp.fc", layer=0, **cfg):
    torch.manual_seed(0)
    linear = nn.Linear(COLS, ROWS, bias=False)
    named = NamedModule(linear, name=name, full_name=f"model.layers.{layer}.{name}", layer_index=layer)
    qcfg = FairGPTQConfig(bits=4, group_size=8, desc_act=False, act_group_aware=False, alpha=alpha,
                          sum_hessians=sum_hessians, **cfg)
    task = FairGPTQ(named, qcfg)
    task.quantizer.configure(perchannel=True)
    return task, linear.weight.data.clone()


def closed_form(W, batches, alpha, sum_hessians, damp):
    """W' = W - W H01 M^-1, H = (2/N) sum x x^T over real tokens, H01 = 2 alpha (2/N) sum_pairs d d^T."""
    _, H, H01, shifted = reference_shift(W, batches, alpha, damp, sum_hessians)
    return shifted, H, H01


@pytest.mark.parametrize("sum_hessians", [1, 0])
def test_shift_matches_float64_closed_form(sum_hessians):
    task, W = make_task(alpha=0.7, sum_hessians=sum_hessians)
    batches = padded_batches()
    feed(task, batches)
    shifted = task._fair_shift_weights()
    expected, _, _ = closed_form(W, batches, 0.7, sum_hessians, task.qcfg.damp_percent)
    assert not torch.allclose(expected.float(), W, atol=1e-3)  # the shift is not a no-op
    torch.testing.assert_close(shifted.double(), expected, rtol=1e-4, atol=1e-5)
    assert task.n_pairs == 4 and task.nsamples == 34  # 18 + 16 real tokens: H's unit is tokens


def test_exact_form_minimises_the_fair_objective():
    task, W = make_task(alpha=0.5, damp_percent=1e-6, damp_auto_increment=0.0)
    batches = padded_batches(seed=3)
    feed(task, batches)
    shifted = task._fair_shift_weights().double()
    _, H, H01 = closed_form(W, batches, 0.5, 1, 1e-6)
    # gradient of tr((W'-W) H (W'-W)^T) + tr(W' H01 W'^T) vanishes at W'
    gradient = (shifted - W.double()) @ H + shifted @ H01
    assert gradient.abs().max() < 1e-4 * (W.double() @ H01).abs().max()


def test_quantize_starts_from_the_shifted_weights_and_logs(tmp_path):
    task, W = make_task(alpha=0.7, log_delta_w=1, log_hessian_sensitivity=1, log_dir=str(tmp_path))
    feed(task, padded_batches())
    Q = task.quantize()[0]
    shifted = task._fair_shifted
    assert torch.linalg.norm(Q - shifted) < 0.5 * torch.linalg.norm(Q - W)  # Q rounds W', not W
    record = json.loads((tmp_path / "delta_w.jsonl").read_text().strip())
    assert record["module"] == "model.layers.0.mlp.fc" and record["n_pairs"] == 4 and record["alpha"] == 0.7
    assert record["delta_w_fro"] == pytest.approx(torch.linalg.norm(W - shifted).item(), rel=1e-5)
    assert record["relative_delta_w"] == pytest.approx(record["delta_w_fro"] / torch.linalg.norm(W).item(), rel=1e-6)
    lines = (tmp_path / "hessian_sensitivity" / "model.layers.0.mlp.fc.csv").read_text().splitlines()
    assert lines[0] == "column,h01_diag,weight_error_l2,sensitivity" and len(lines) == COLS + 1
    column, h01, err, sens = lines[1].split(",")
    assert float(err) == pytest.approx(torch.linalg.norm(shifted[:, int(column)] - Q[:, int(column)]).item(), rel=1e-5)
    assert float(sens) == pytest.approx(float(h01) * float(err), rel=1e-6)
    assert max(float(line.split(",")[3]) for line in lines[1:]) == pytest.approx(float(sens))


def test_rtn_fallback_rounds_the_shifted_weights():
    task, W = make_task(alpha=0.7)
    feed(task, padded_batches())
    task.fallback = Fallback(strategy=FallbackStrategy.RTN, threshold=10**9)  # every module falls back
    Q, *_, avg_loss, _, _ = task.quantize()
    assert "fallback" in str(avg_loss)
    shifted = task._fair_shifted
    assert torch.linalg.norm(Q - shifted) < 0.5 * torch.linalg.norm(Q - W)


def test_nan_retry_reenters_with_the_shifted_weights(monkeypatch):
    task, W = make_task(alpha=0.7)
    feed(task, padded_batches())
    original = task.hessian_inverse
    calls = []

    def nan_once(H):  # the first inverse is NaN: the parent retries with mock quantization
        Hinv, damp = original(H)
        calls.append(1)
        return (torch.full_like(Hinv, float("nan")) if len(calls) == 1 else Hinv), damp

    monkeypatch.setattr(task, "hessian_inverse", nan_once)
    starts = []
    parent_quantize = FairGPTQ.__mro__[1].quantize

    def spy(self, blocksize=128):
        starts.append(self.module_copy.clone())
        return parent_quantize(self, blocksize=blocksize)

    monkeypatch.setattr(FairGPTQ.__mro__[1], "quantize", spy)
    Q = task.quantize()[0]
    assert task.qcfg.mock_quantization and len(starts) == 2  # the retry ran
    for start in starts:
        torch.testing.assert_close(start, task._fair_shifted)  # both passes started from W'
    assert torch.isfinite(Q).all()
