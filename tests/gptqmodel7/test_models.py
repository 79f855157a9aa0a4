"""Whole quantization runs on tiny models through GPTQModel 7.7.0 with fair_gptq_v7 (CPU, seconds each)."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import fair_gptq_v7
from fair_gptq_v7 import FairGPTQConfig
from fair_gptq_v7.task import FairGPTQ
from task_helpers import gptq_loss

pytestmark = pytest.mark.slow

# (stereotype, anti-stereotype) pairs of unequal lengths, some of <= 10 tokens (which 7.7.0 would drop)
PAIRS = [
    ("The nurse said she would help.", "The nurse said he would help us all."),
    ("Engineers are men.", "Engineers are always women who love numbers."),
    ("The old man could not use the phone.", "The young man could not use it."),
    ("Her family was poor and lived in a small house.", "Her family was rich."),
]
SENTENCES = [s for pair in PAIRS for s in pair]
LONG_SENTENCES = [s + " They talked about it all evening at home." for s in SENTENCES]  # all > 10 tokens


def quantize(model_dir, out_dir, *, stock=False, batch_size=2, sentences=SENTENCES, plain_config=False, **cfg):
    from gptqmodel import BACKEND, GPTQModel
    from gptqmodel.quantization.config import GPTQConfig

    (fair_gptq_v7.uninstall if stock else fair_gptq_v7.install)()
    try:
        make = GPTQConfig if stock or plain_config else FairGPTQConfig
        qcfg = make(bits=4, group_size=32, device="cpu", **cfg)
        model = GPTQModel.load(str(model_dir), qcfg, dtype=torch.float32)
        model.quantize(sentences, batch_size=batch_size, calibration_sort=None, backend=BACKEND.TORCH)
        model.save(str(out_dir))
    finally:
        fair_gptq_v7.uninstall()
    tensors = {}
    for file in sorted(Path(out_dir).glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


class Spy:
    """Records, per module, the whole batches given to fair_add_batch, the rows given to add_batch and W'."""

    def __init__(self, monkeypatch):
        self.batches, self.rows, self.shifted, self.results = {}, {}, {}, {}
        fair_add, add, shift = FairGPTQ.fair_add_batch, FairGPTQ.add_batch, FairGPTQ._fair_shift_weights
        fair_quantize = FairGPTQ.quantize
        spy = self

        def fair_add_batch(task, inp, keep_mask, batch_index):
            spy.batches.setdefault(task.full_name, []).append((batch_index, inp.detach().clone()))
            return fair_add(task, inp, keep_mask, batch_index)

        def add_batch(task, inp, out, batch_index=None):
            spy.rows.setdefault(task.full_name, []).append(inp.detach().reshape(-1, inp.shape[-1]).clone())
            return add(task, inp, out, batch_index=batch_index)

        def shift_weights(task):
            result = shift(task)
            spy.shifted[task.full_name] = None if result is None else result.clone()
            return result

        def quantize(task, blocksize=128):  # Q (module layout), reported loss, damp used, nsamples
            result = fair_quantize(task, blocksize=blocksize)
            spy.results[task.full_name] = (result[0].detach().clone(), result[5], result[6], result[7])
            return result

        monkeypatch.setattr(FairGPTQ, "quantize", quantize)
        monkeypatch.setattr(FairGPTQ, "fair_add_batch", fair_add_batch)
        monkeypatch.setattr(FairGPTQ, "add_batch", add_batch)
        monkeypatch.setattr(FairGPTQ, "_fair_shift_weights", shift_weights)


def batch_masks(model_dir, batch_size):
    """Keep-masks of the calibration batches, from the tokenizer alone (the test's own account of padding)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    lengths = [len(tokenizer(s)["input_ids"]) for s in SENTENCES]
    masks = []
    for start in range(0, len(lengths), batch_size):
        group = lengths[start:start + batch_size]
        mask = torch.zeros(len(group), max(group), dtype=torch.bool)
        for i, n in enumerate(group):
            if tokenizer.padding_side == "left":
                mask[i, max(group) - n:] = True
            else:
                mask[i, :n] = True
        masks.append(mask)
    return masks


def expected_shift(W, rows, batches, masks, alpha, damp):
    """float64 closed form from the recorded inputs: H over the rows H received, pairs from whole batches."""
    W = W.double()
    X = torch.cat(rows).double()
    N = X.shape[0]
    H = 2 / N * X.t() @ X
    S01 = torch.zeros_like(H)
    assert [index for index, _ in batches] == list(range(len(masks)))  # one call per batch, in order
    for (_, inp), mask in zip(batches, masks):
        seqs = inp.reshape(mask.shape[0], mask.shape[1], -1).double()  # a flattened (OPT fc) input too
        for p in range(mask.shape[0] // 2):
            s, a = seqs[2 * p][mask[2 * p]], seqs[2 * p + 1][mask[2 * p + 1]]
            n = min(len(s), len(a))
            S01 += (s[:n] - a[:n]).t() @ (s[:n] - a[:n])
    H01 = 2 * alpha * 2 / N * S01
    M = H + H01
    dead = torch.diag(H) == 0
    M[dead, dead] = 1
    M += damp * torch.mean(torch.diag(M)) * torch.eye(M.shape[0], dtype=torch.float64)
    return W - W @ H01 @ torch.linalg.inv(M)


def check_layer0(spy, model_dir, batch_size, modules, leader_of, alpha=0.3, damp=0.05):
    weights = load_file(str(Path(model_dir) / "model.safetensors"))
    masks = batch_masks(model_dir, batch_size)
    for name in modules:
        source = leader_of.get(name, name)
        assert name not in spy.batches or source == name  # a follower never sums pairs itself
        expected = expected_shift(weights[name + ".weight"], spy.rows[source], spy.batches[source], masks, alpha, damp)
        torch.testing.assert_close(spy.shifted[name].double(), expected, rtol=2e-4, atol=2e-5, msg=name)


def dequantized(tensors, name, bits=4):
    """W-layout weights decoded from the saved GPTQ (v1) tensors: 32-bit words of 4-bit codes, input rows packed
    along qweight's rows, output columns along qzeros' columns, zeros stored minus one."""
    qweight, qzeros = tensors[name + ".qweight"], tensors[name + ".qzeros"]
    scales, g_idx = tensors[name + ".scales"].float(), tensors[name + ".g_idx"].long()
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    codes = ((qweight.unsqueeze(1) >> shifts.view(1, -1, 1)) & (2 ** bits - 1)).reshape(-1, qweight.shape[1])
    zeros = ((qzeros.unsqueeze(2) >> shifts.view(1, 1, -1)) & (2 ** bits - 1)).reshape(qzeros.shape[0], -1) + 1
    zeros = zeros[:, : scales.shape[1]]  # the last word of a row may be part padding
    return (scales[g_idx] * (codes - zeros[g_idx]).float()).t()  # [out, in]


def check_layer0_losses(spy, model_dir, out_dir, log_dir, batch_size, modules, leader_of, alpha=0.3, damp=0.05):
    """delta_w.jsonl's losses against float64 closed forms from the checkpoint's W, the dequantized saved Q and H
    from the rows recorded during the run; 7.7.0's reported loss is the closed form against W'."""
    weights = load_file(str(Path(model_dir) / "model.safetensors"))
    saved = {}
    for file in sorted(Path(out_dir).glob("*.safetensors")):
        saved.update(load_file(str(file)))
    records = [json.loads(line) for line in (Path(log_dir) / "delta_w.jsonl").read_text().splitlines()]
    records = {r["module"]: r for r in records}
    masks = batch_masks(model_dir, batch_size)
    for name in modules:
        source = leader_of.get(name, name)
        X = torch.cat(spy.rows[source]).double()
        N = X.shape[0]
        H = 2 / N * X.t() @ X
        W = weights[name + ".weight"]
        shifted = expected_shift(W, spy.rows[source], spy.batches[source], masks, alpha, damp)
        Q, avg_loss, used_damp, nsamples = spy.results[name]
        assert nsamples == N and used_damp == damp, name
        Q_saved = dequantized(saved, name)
        torch.testing.assert_close(Q_saved, Q.float(), rtol=2e-3, atol=1e-4, msg=name)  # fp16 scales
        record = records[name]
        assert record["loss_vs_shifted_w"] == pytest.approx(gptq_loss(Q, shifted, H, damp, N), rel=1e-4), name
        assert record["loss_vs_w"] == pytest.approx(gptq_loss(Q, W, H, damp, N), rel=1e-4), name
        assert avg_loss == pytest.approx(gptq_loss(Q, shifted, H, damp, N), rel=1e-4), name
        # from the saved checkpoint alone (fp16 scales): the same within the rounding of the scales
        assert record["loss_vs_w"] == pytest.approx(gptq_loss(Q_saved, W, H, damp, N), rel=1e-2), name
        assert record["loss_vs_w"] > record["loss_vs_shifted_w"], name


@pytest.mark.parametrize("batch_size", [2, 4])
def test_llama_shift_matches_closed_form_and_followers_use_their_leader(stories260k_dir, tmp_path, monkeypatch,
                                                                         batch_size):
    spy = Spy(monkeypatch)
    quantize(stories260k_dir, tmp_path / "out", batch_size=batch_size, alpha=0.3, ignore_bias="q_proj,up_proj",
             log_delta_w=1, log_dir=str(tmp_path / "logs"))
    # q_proj leads q/k/v and gate_proj leads gate/up; both leaders and followers are checked
    names = [f"model.layers.0.{m}" for m in ("self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj")]
    leader_of = {n: "model.layers.0.self_attn.q_proj" for n in names[:2]}
    check_layer0(spy, stories260k_dir, batch_size, names, leader_of)
    check_layer0_losses(spy, stories260k_dir, tmp_path / "out", tmp_path / "logs", batch_size, names, leader_of)
    assert spy.shifted.get("model.layers.0.self_attn.q_proj") is None  # ignored: no shift
    assert "model.layers.0.self_attn.q_proj" in spy.batches  # ... but it summed pairs for its followers
    assert "model.layers.0.mlp.up_proj" not in spy.shifted


@pytest.mark.parametrize("batch_size", [2, 4])
def test_opt_flattened_fc_inputs_are_paired_with_the_keep_mask(tiny_opt_dir, tmp_path, monkeypatch, batch_size):
    spy = Spy(monkeypatch)
    quantize(tiny_opt_dir, tmp_path / "out", batch_size=batch_size, alpha=0.3, log_delta_w=1,
             log_dir=str(tmp_path / "logs"))
    first = spy.batches["model.decoder.layers.0.fc1"][0][1]
    assert first.dim() == 2  # OPT's fc1 really gets [batch*seq, hidden]
    names = ["model.decoder.layers.0.fc1", "model.decoder.layers.0.fc2", "model.decoder.layers.0.self_attn.q_proj"]
    check_layer0(spy, tiny_opt_dir, batch_size, names, {})
    check_layer0_losses(spy, tiny_opt_dir, tmp_path / "out", tmp_path / "logs", batch_size, names, {})


@pytest.mark.parametrize("batch_size", [2, 4])
def test_sum_difference_matches_the_closed_form_and_keeps_stock_h_where_it_must(stories260k_dir, tmp_path,
                                                                                  monkeypatch, batch_size):
    spy = Spy(monkeypatch)
    summing = {}
    add = FairGPTQ.add_batch  # the spy's, which records the rows

    def add_batch(task, inp, out, batch_index=None):  # which tasks took the sum-difference path
        summing[task.full_name] = task.fair_sums_hessian
        return add(task, inp, out, batch_index=batch_index)

    monkeypatch.setattr(FairGPTQ, "add_batch", add_batch)  # wraps the spy's add_batch, which records the rows
    common = dict(batch_size=batch_size, alpha=0.3, ignore_bias="q_proj,up_proj")
    quantize(stories260k_dir, tmp_path / "sd", fair_accumulate="sum-difference", **common)
    layer = "model.layers.0."
    # alone in their group and active: H from the pair sums; q_proj (ignored leader of active k/v) and gate_proj
    # (leader of the ignored up_proj, which adopts its H) keep stock H
    assert summing[layer + "self_attn.o_proj"] and summing[layer + "mlp.down_proj"]
    assert not summing[layer + "self_attn.q_proj"] and not summing[layer + "mlp.gate_proj"]
    names = [layer + m for m in ("self_attn.o_proj", "mlp.down_proj", "self_attn.k_proj", "mlp.gate_proj")]
    check_layer0(spy, stories260k_dir, batch_size, names, {layer + "self_attn.k_proj": layer + "self_attn.q_proj"})
    for name in (layer + "self_attn.o_proj", layer + "mlp.down_proj"):
        X = torch.cat(spy.rows[name])
        assert spy.results[name][3] == X.shape[0]  # nsamples counted as stock counts them
    attention = [layer + "self_attn." + m for m in ("q_proj", "k_proj", "v_proj")]
    sd_shifted = {n: spy.shifted[n] for n in attention[1:]}
    direct = quantize(stories260k_dir, tmp_path / "direct", **common)
    sd = {}
    for file in sorted((tmp_path / "sd").glob("*.safetensors")):
        sd.update(load_file(str(file)))
    # the first subset (q/k/v on q_proj's stock H) is the direct mode's bit for bit; later subsets see the outputs
    # of modules already quantized, o_proj among them, whose H differs by float rounding
    for name in attention:
        assert torch.equal(sd[name + ".qweight"], direct[name + ".qweight"]), name
    for name in attention[1:]:
        assert torch.equal(sd_shifted[name], spy.shifted[name]), name
    saved = json.loads((tmp_path / "sd" / "quantize_config.json").read_text())
    assert saved["fair_accumulate"] == "sum-difference"


def test_sum_difference_pairs_opt_flattened_inputs_with_their_pad_rows(tiny_opt_dir, tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    quantize(tiny_opt_dir, tmp_path / "out", batch_size=4, alpha=0.3, fair_accumulate="sum-difference")
    names = ["model.decoder.layers.0.fc1", "model.decoder.layers.0.fc2", "model.decoder.layers.0.self_attn.out_proj"]
    assert spy.batches[names[0]][0][1].dim() == 2  # fc1's H counts pad rows: the sums must too
    check_layer0(spy, tiny_opt_dir, 4, names, {})


def test_sum_difference_at_alpha_zero_is_bit_identical_to_stock(stories260k_dir, tmp_path):
    stock = quantize(stories260k_dir, tmp_path / "stock", stock=True, sentences=LONG_SENTENCES)
    fair = quantize(stories260k_dir, tmp_path / "fair", alpha=0.0, fair_accumulate="sum-difference",
                    sentences=LONG_SENTENCES)
    assert stock.keys() == fair.keys() and all(torch.equal(stock[k], fair[k]) for k in stock)


def test_alpha_zero_is_bit_identical_to_stock(stories260k_dir, tmp_path):
    stock = quantize(stories260k_dir, tmp_path / "stock", stock=True, sentences=LONG_SENTENCES)
    fair = quantize(stories260k_dir, tmp_path / "fair", alpha=0.0, sentences=LONG_SENTENCES)
    assert stock.keys() == fair.keys()
    for key in stock:
        assert torch.equal(stock[key], fair[key]), key
    saved = json.loads((tmp_path / "fair" / "quantize_config.json").read_text())
    assert "alpha" not in saved  # an alpha=0 checkpoint is stock 7.7.0's


def test_fair_config_keeps_short_sentences_that_stock_drops(stories260k_dir, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    short = ["He ran.", "She ran."]  # a pair of short sentences in front: stock drops both
    lengths = [len(AutoTokenizer.from_pretrained(str(stories260k_dir))(s)["input_ids"]) for s in short]
    assert max(lengths) <= 10
    spy = Spy(monkeypatch)  # records the rows of every module's H, through the installed classes
    quantize(stories260k_dir, tmp_path / "plain", plain_config=True, sentences=short + SENTENCES)  # stock: min 10
    plain_rows = sum(len(r) for r in spy.rows["model.layers.0.self_attn.q_proj"])
    spy.rows.clear()
    quantize(stories260k_dir, tmp_path / "fair", alpha=0.0, sentences=short + SENTENCES)
    fair_rows = sum(len(r) for r in spy.rows["model.layers.0.self_attn.q_proj"])
    assert fair_rows == plain_rows + sum(lengths)


def test_two_worker_runs_are_deterministic_and_load_in_stock(tiny_mistral_dir, tmp_path):
    first = quantize(tiny_mistral_dir, tmp_path / "a", alpha=0.5, batch_size=4)
    second = quantize(tiny_mistral_dir, tmp_path / "b", alpha=0.5, batch_size=4)
    assert all(torch.equal(first[k], second[k]) for k in first)
    plain = quantize(tiny_mistral_dir, tmp_path / "c", stock=True, batch_size=4)
    assert any(not torch.equal(first[k], plain[k]) for k in first if k.endswith("qweight"))  # the term acted

    from gptqmodel import BACKEND, GPTQModel

    saved = json.loads((tmp_path / "a" / "quantize_config.json").read_text())
    assert saved["alpha"] == 0.5 and saved["sum_hessians"] == 1
    model = GPTQModel.load(str(tmp_path / "a"), device="cpu", backend=BACKEND.TORCH)  # stock classes in place
    logits = model.model(torch.tensor([[1, 5, 9, 13]])).logits
    assert torch.isfinite(logits).all()


def test_fair_config_refuses_stock_processor_and_broken_layouts(stories260k_dir):
    from gptqmodel import GPTQModel

    qcfg = FairGPTQConfig(bits=4, group_size=32, device="cpu", alpha=0.3)
    model = GPTQModel.load(str(stories260k_dir), qcfg, dtype=torch.float32)
    fair_gptq_v7.uninstall()
    with pytest.raises(RuntimeError, match="stock GPTQ processor"):
        model.quantize(SENTENCES, batch_size=2, calibration_sort=None)
    fair_gptq_v7.install()
    try:
        with pytest.raises(ValueError, match="calibration_sort='desc'"):
            model.quantize(SENTENCES, batch_size=2)  # 7.7.0's default sort
        with pytest.raises(ValueError, match="must be even"):
            model.quantize(SENTENCES, batch_size=3, calibration_sort=None)
        with pytest.raises(ValueError, match="calibration_data_min_length=10"):
            fair_gptq_v7.quantize(model, SENTENCES, calibration_data_min_length=10)
        with pytest.raises(ValueError, match="calibration_concat_size"):
            fair_gptq_v7.quantize(model, SENTENCES, calibration_concat_size=64)
    finally:
        fair_gptq_v7.uninstall()
