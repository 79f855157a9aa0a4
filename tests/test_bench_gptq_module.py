"""The module benchmark's synthetic inputs and its memory ratio (the timings themselves are not tested)."""
from __future__ import annotations

import pytest
import torch

from benchmarks import bench_gptq_module as bench


def test_parse_shapes_reads_columns_by_rows_and_refuses_garbage():
    assert bench.parse_shapes("4096x4096, 11008X4096") == [(4096, 4096), (11008, 4096)]
    with pytest.raises(SystemExit, match="COLUMNSxROWS"):
        bench.parse_shapes("4096by4096")


def test_synthetic_pairs_are_aligned_and_differ_by_a_small_signal():
    data = bench.synthetic_inputs([(32, 8)], pairs=3, seq=5, device="cpu", seed=1)
    weight = data["weights"]["synthetic.32x8"]
    batches = data["inputs"]["synthetic.32x8"]
    assert weight.shape == (8, 32) and len(batches) == 3
    for batch in batches:
        assert batch.shape == (2, 5, 32)
        difference = batch[1] - batch[0]
        # noise 0.3x a standard Gaussian: the difference's RMS is near 0.3, the sentences' near 1
        assert 0.15 < difference.pow(2).mean().sqrt().item() < 0.45
        assert 0.7 < batch[0].pow(2).mean().sqrt().item() < 1.3
    again = bench.synthetic_inputs([(32, 8)], pairs=3, seq=5, device="cpu", seed=1)
    assert torch.equal(again["inputs"]["synthetic.32x8"][2], batches[2])


def test_peak_ratio_compares_the_largest_peaks_of_a_block():
    block = [{"config": "stock", "peak_extra_mib": 100.0}, {"config": "fair", "peak_extra_mib": 110.0},
             {"config": "fair", "peak_extra_mib": 90.0}, {"config": "stock", "peak_extra_mib": 80.0}]
    assert bench.peak_ratio(block, "fair") == pytest.approx(1.1)
    assert bench.peak_ratio(block, "stock") == 1.0
