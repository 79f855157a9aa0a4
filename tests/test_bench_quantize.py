"""The quantization benchmark's bookkeeping: ABBA order and the per-block ratios (hand-computed values)."""
from __future__ import annotations

import json

import pytest

from benchmarks import bench_quantize as bench


def test_abba_order_gives_every_configuration_the_same_mean_position():
    order = bench.abba_order(["stock", "fair", "fair-sd"])
    assert order == ["stock", "fair", "fair-sd", "fair-sd", "fair", "stock"]
    positions = {c: [i for i, name in enumerate(order) if name == c] for c in set(order)}
    assert {c: sum(p) / 2 for c, p in positions.items()} == {"stock": 2.5, "fair": 2.5, "fair-sd": 2.5}


def test_a_linear_drift_cancels_in_the_block_ratio():
    # true times stock 100, fair 110; the machine slows down by 3 s per run
    order = bench.abba_order(["stock", "fair"])
    block = [{"config": c, "seconds": {"stock": 100.0, "fair": 110.0}[c] + 3.0 * i} for i, c in enumerate(order)]
    # stock runs: 100 + 0, 100 + 9 = 209; fair runs: 110 + 3, 110 + 6 = 229
    assert bench.block_ratios(block, "seconds") == {"stock": 1.0, "fair": pytest.approx(229 / 209)}
    assert 229 / 209 == pytest.approx(1.0957, abs=1e-4)  # the drift adds 4.5 s to both; 110/100 would be exact


def test_summary_spreads_runs_and_block_ratios():
    run = lambda c, s: {"config": c, "seconds": s, "cpu_seconds": 2 * s, "peak_rss_mib": 1000.0}
    blocks = [[run("stock", 100), run("fair", 105), run("fair", 107), run("stock", 102)],
              [run("stock", 98), run("fair", 100), run("fair", 104), run("stock", 100)]]
    summary = bench.summarise(blocks, ["stock", "fair"])
    assert summary["fair"]["wall_s"] == {"median": 104.5, "min": 100, "max": 107, "n": 4}
    assert summary["fair"]["wall_ratio"]["min"] == pytest.approx(204 / 198)
    assert summary["fair"]["wall_ratio"]["max"] == pytest.approx(212 / 202)
    assert summary["fair"]["cpu_ratio"]["median"] == pytest.approx((212 / 202 + 204 / 198) / 2)
    assert summary["stock"]["rss_ratio"]["median"] == 1.0


@pytest.mark.slow
def test_child_runs_upstream_gptq_for_stock_and_the_overlay_for_fair(tiny_mistral_dir, stereoset_dev_path, capsys):
    """The 2.2.0 child: "stock" swaps in upstream's GPTQ class (kept beside the overlay), "fair" keeps the
    overlay's; both report the 2.2.0 stack."""
    import gptqmodel.looper.gptq_processor as processor

    overlay_gptq = processor.GPTQ
    results = {}
    try:
        for config in ("fair", "stock"):
            assert bench.main(["--config", config, "--model", str(tiny_mistral_dir), "--pairs", "4",
                               "--stereoset", str(stereoset_dev_path), "--group-size", "32", "--device", "cpu"]) == 0
            line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("BENCH_RESULT "))
            results[config] = json.loads(line.removeprefix("BENCH_RESULT "))
            results[config]["gptq_class_module"] = processor.GPTQ.__module__
    finally:
        processor.GPTQ = overlay_gptq
    assert results["fair"]["gptq_class_module"] == overlay_gptq.__module__
    assert results["stock"]["gptq_class_module"] != overlay_gptq.__module__
    for config, result in results.items():
        assert result["config"] == config and result["n_pairs"] == 4
        assert result["versions"]["gptqmodel"].startswith("2.2.0")
