"""‖ΔW‖/‖W‖ per module of one 2.2.0-overlay run (example_fair_gptq.py) and one 7.7.0-port run (python -m
fair_gptq_v7), both made with --log-delta-w on the same pairs:

    python -m fair_gptq_v7.compare --overlay OUT_2_2_0 --port OUT_7_7_0 --csv delta_w.csv

Prints the per-module table's summary; reads only the two run folders (no GPTQModel import).
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path


def overlay_delta_w(folder: Path) -> dict:
    """module -> relative ΔW, from the 2.2.0 main job's run record."""
    record = json.loads((folder / "fair_gptq_run.json").read_text(encoding="utf-8"))
    return {m["module"]: m["relative_delta_w"] for m in record["modules"] if "relative_delta_w" in m}


def port_delta_w(folder: Path) -> dict:
    """module -> relative ΔW, from the 7.7.0 main job's delta_w.jsonl (its run only)."""
    run_id = json.loads((folder / "fair_gptq_run.json").read_text(encoding="utf-8"))["run_id"]
    lines = (folder / "fair_logs" / "delta_w.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return {r["module"]: r["relative_delta_w"] for r in records if r["run_id"] == run_id}


def calibration_checksums(overlay: Path, port: Path) -> tuple:
    def checksum(folder):
        record = json.loads((folder / "fair_gptq_run.json").read_text(encoding="utf-8"))
        return record.get("calibration_sha256") or record.get("calibration", {}).get("sha256")
    return checksum(overlay), checksum(port)


def pearson(xs, ys) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return sxy / (sxx * syy) ** 0.5


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--overlay", type=Path, required=True)
    p.add_argument("--port", type=Path, required=True)
    p.add_argument("--csv", type=Path, required=True)
    args = p.parse_args(argv)
    old, new = overlay_delta_w(args.overlay), port_delta_w(args.port)
    if set(old) != set(new):
        raise SystemExit(f"the runs shifted different modules: only overlay {sorted(set(old) - set(new))}, "
                         f"only port {sorted(set(new) - set(old))}")
    modules = sorted(old, key=lambda m: (int(m.split(".")[2]), m))
    ratios = [new[m] / old[m] for m in modules]
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with args.csv.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["module", "relative_delta_w_overlay_2_2_0", "relative_delta_w_port_7_7_0", "ratio"])
        for module, ratio in zip(modules, ratios):
            writer.writerow([module, f"{old[module]:.6g}", f"{new[module]:.6g}", f"{ratio:.4f}"])
    sums = calibration_checksums(args.overlay, args.port)
    print(f"calibration sha256: overlay {sums[0]}, port {sums[1]} ({'same' if sums[0] == sums[1] else 'DIFFERENT'})")
    print(f"{len(modules)} modules; relative dW overlay median {statistics.median(old.values()):.4f}, "
          f"port median {statistics.median(new.values()):.4f}; port/overlay ratio median "
          f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}); "
          f"Pearson r {pearson([old[m] for m in modules], [new[m] for m in modules]):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
