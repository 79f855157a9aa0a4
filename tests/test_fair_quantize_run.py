"""Run-level behaviour of Fair-GPTQ through GPTQModel.quantize on the tiny OPT: refused calibration layouts,
buffered forward inputs, and the run identifier of the ΔW log."""
import pytest
import torch

from quant_helpers import quantize_and_load_tensors, read_delta_w_log

pytestmark = pytest.mark.slow


def test_concatenated_calibration_is_refused_before_any_layer_is_quantized(tiny_opt_dir, tmp_path, monkeypatch):
    from gptqmodel.quantization import GPTQ
    quantized = []
    monkeypatch.setattr(GPTQ, "quantize", lambda self, *a, **k: quantized.append(self.name))
    with pytest.raises(ValueError, match=r"calibration_dataset_concat_size=64 joins calibration sentences"):
        quantize_and_load_tensors(tiny_opt_dir, tmp_path / "q", alpha=0.1, group_size=32,
                                  quantize_kwargs=dict(calibration_dataset_concat_size=64))
    assert quantized == []


def test_buffered_forward_inputs_give_the_same_result(tiny_opt_dir, tmp_path):
    """buffered_fwd=True keeps each module's inputs on the CPU and processes them at quantization time: the pairs
    (and the batch shapes flattened fc1/fc2 need) must survive that, so the result is the same, bit for bit.
    Both runs log into one folder: the run identifier keeps their records apart."""
    log_dir = tmp_path / "logs"
    results = {}
    for buffered in (False, True):
        results[buffered] = quantize_and_load_tensors(
            tiny_opt_dir, tmp_path / f"q-{buffered}", alpha=0.3, ignore_bias="q_proj", group_size=32, log_delta_w=1,
            log_dir=str(log_dir), log_run_id=f"buffered-{buffered}", quantize_kwargs=dict(buffered_fwd=buffered))
    assert results[True].keys() == results[False].keys()
    for key, tensor in results[False].items():
        assert torch.equal(results[True][key], tensor), key
    records = read_delta_w_log(log_dir)
    by_run = {run: {r["module"]: r for r in records if r["run_id"] == run} for run in ("buffered-False", "buffered-True")}
    assert len(records) == 2 * 4 * 5 and {len(run) for run in by_run.values()} == {4 * 5}
    assert any(name.endswith("fc2") for name in by_run["buffered-True"])
    for module, record in by_run["buffered-False"].items():
        assert by_run["buffered-True"][module]["delta_w_fro"] == record["delta_w_fro"]


def test_records_of_a_run_share_a_generated_identifier(tiny_opt_dir, tmp_path):
    from gptqmodel.quantization import QuantizeConfig
    log_dir = tmp_path / "logs"
    for run in range(2):
        quantize_and_load_tensors(tiny_opt_dir, tmp_path / f"q{run}", alpha=0.1, select_layer="2", group_size=32,
                                  log_delta_w=1, log_dir=str(log_dir))
    run_ids = [record["run_id"] for record in read_delta_w_log(log_dir)]
    assert len(run_ids) == 2 * 6 and len(set(run_ids[:6])) == len(set(run_ids[6:])) == 1
    assert run_ids[0] != run_ids[6]
    saved = QuantizeConfig.from_pretrained(str(tmp_path / "q1"))
    assert saved.log_run_id == run_ids[6]  # the checkpoint names the run whose records describe it
