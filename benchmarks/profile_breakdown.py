#!/usr/bin/env python3
"""Where does a Fair-GPTQ run spend the time a stock run does not? Compares two cProfile dumps of quantize().

Writes the functions whose own time (tottime) differs most between the runs, and the cumulative time of the
GPTQ steps (accumulation of H, the fair accumulation, the shift, the column loop), so the whole difference is
accounted for. The dumps come from `bench_quantize.py --profile-dir DIR`:

    python benchmarks/bench_quantize.py --configs stock,fair --profile-dir prof/
    python benchmarks/profile_breakdown.py prof/stock-0.pstats prof/fair-1.pstats --top 15
"""
from __future__ import annotations

import argparse
import json
import pstats
import sys
from pathlib import Path

# GPTQ's steps, by function name, in gptq.py (the overlay) or gptq.py.upstream (stock)
STEPS = ("process_batch", "_fair_accumulate", "_fair_sum_difference", "_fair_shift_weights", "quantize",
         "_fair_after_quantize", "add_batch")


def function_times(path: str) -> tuple[dict[tuple[str, str], tuple[float, float, int]], float]:
    """(file name, function name) -> (own seconds, cumulative seconds, calls), summed over line numbers; and the
    profile's total time."""
    profile = pstats.Stats(path)  # .stats: {(file, line, name): (primitive calls, calls, tottime, cumtime, callers)}
    times: dict[tuple[str, str], tuple[float, float, int]] = {}
    for (file, _line, name), (_primitive, calls, own, cumulative, _callers) in profile.stats.items():
        key = (Path(file).name, name)
        before = times.get(key, (0.0, 0.0, 0))
        times[key] = (before[0] + own, before[1] + cumulative, before[2] + calls)
    return times, profile.total_tt


def breakdown(stock_path: str, fair_path: str, top: int) -> dict:
    (stock, stock_total), (fair, fair_total) = function_times(stock_path), function_times(fair_path)
    keys = set(stock) | set(fair)
    rows = []
    for key in keys:
        own_stock, own_fair = stock.get(key, (0.0, 0.0, 0))[0], fair.get(key, (0.0, 0.0, 0))[0]
        rows.append({"file": key[0], "function": key[1], "stock_s": own_stock, "fair_s": own_fair,
                     "delta_s": own_fair - own_stock,
                     "calls_stock": stock.get(key, (0, 0, 0))[2], "calls_fair": fair.get(key, (0, 0, 0))[2]})
    rows.sort(key=lambda row: abs(row["delta_s"]), reverse=True)
    steps = {}
    for name in STEPS:
        cumulative = {label: sum(v[1] for k, v in times.items() if k[1] == name and k[0].startswith("gptq.py"))
                      for label, times in (("stock", stock), ("fair", fair))}
        steps[name] = cumulative
    return {"total_stock_s": stock_total, "total_fair_s": fair_total,
            "steps_cumulative_s": steps, "top_own_time_differences": rows[:top]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stock")
    p.add_argument("fair")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    result = breakdown(args.stock, args.fair, args.top)
    print(f"profiled total: stock {result['total_stock_s']:.1f} s, fair {result['total_fair_s']:.1f} s, "
          f"difference {result['total_fair_s'] - result['total_stock_s']:+.1f} s")
    print("\nGPTQ steps (cumulative s, gptq.py):")
    for name, times in result["steps_cumulative_s"].items():
        print(f"  {name:<24} stock {times['stock']:8.2f}  fair {times['fair']:8.2f}  "
              f"delta {times['fair'] - times['stock']:+8.2f}")
    print("\nlargest differences in own time:")
    print(f"  {'function':<55} {'stock s':>8} {'fair s':>8} {'delta':>8} {'calls':>15}")
    for row in result["top_own_time_differences"]:
        label = f"{row['file']}:{row['function']}"[:55]
        print(f"  {label:<55} {row['stock_s']:8.2f} {row['fair_s']:8.2f} {row['delta_s']:+8.2f} "
              f"{row['calls_stock']:>7}/{row['calls_fair']:<7}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
