"""The study's bias-against-perplexity plots: every curve, the reference points, 95 % error bars, α labels.

Points of different curves crowd near plain GPTQ (α = 0.1 costs little perplexity), so α labels are placed by
`place_labels`: each label takes the nearest free spot around its point that overlaps no other label, no marker,
no legend and stays inside the axes; a thin leader line joins labels that had to move away.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from study import analysis

# no pair term, only loss of precision: FP (none), plain GPTQ, GPTQ without groups, GPTQ at 3 bits
DEGRADATION = ("fp", "gptq", "gptq-g-1", "gptq-3bit")
CURVE_STYLE = {"stereo-anti": ("tab:red", "o"), "shuffled": ("tab:blue", "s"),
               "unrelated": ("tab:green", "^"), "stereo-anti-eq": ("tab:purple", "D"),
               "direction": ("tab:orange", "v"), "direction-random": ("tab:gray", "<"),
               "direction-sign-shuffled": ("tab:cyan", ">"), "direction-unrelated": ("tab:olive", "h")}
REFERENCE_STYLE = (("fp", "*", "FP"), ("gptq", "s", "plain GPTQ (α=0, 4-bit g128)"),
                   ("gptq-g-1", "P", "GPTQ 4-bit, no groups"), ("gptq-3bit", "X", "GPTQ 3-bit g128"))
MARKER_HALF_PX = 7  # half the side of the box a marker occupies, in pixels


def _inside(box, frame) -> bool:
    return frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1


def place_labels(ax, labels: list[tuple[float, float, str, str]], fontsize: int = 8) -> list:
    """Annotate (x, y, text, color) points so that no two labels, and no label and marker, overlap.

    Tries offsets on rings of growing radius around the point (right, above, left, below first); a label that
    finds no free spot in the rings takes the candidate with the least overlap. Returns the annotations."""
    from matplotlib.transforms import Bbox

    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    points = ax.transData.transform(np.array([[x, y] for x, y, _, _ in labels])) if labels else np.zeros((0, 2))
    taken = [Bbox.from_extents(px - MARKER_HALF_PX, py - MARKER_HALF_PX, px + MARKER_HALF_PX, py + MARKER_HALF_PX)
             for px, py in points]
    legend = ax.get_legend()
    if legend is not None:
        taken.append(legend.get_window_extent(renderer))
    angles = np.deg2rad([0, 180, 90, 270, 45, 135, 225, 315, 20, 160, 200, 340])
    candidates = [(r * np.cos(a), r * np.sin(a)) for r in (10, 18, 28, 40, 55, 75) for a in angles]
    annotations = []
    for (x, y, text, color) in labels:
        best, best_cost = None, None
        for dx, dy in candidates:
            # anchor the text on the side facing away from the point so the offset is the gap to the text
            ha = "left" if dx > 1 else "right" if dx < -1 else "center"
            va = "bottom" if dy > 1 else "top" if dy < -1 else "center"
            note = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset pixels", ha=ha, va=va,
                               fontsize=fontsize, color=color)
            box = note.get_window_extent(renderer).padded(1)
            cost = sum(box.overlaps(b) for b in taken) + (0 if _inside(box, frame) else 100)
            if cost == 0:
                if best is not None:  # drop the best overlapping candidate kept so far
                    best.remove()
                best, best_cost = note, 0
                break
            if best_cost is None or cost < best_cost:
                if best is not None:
                    best.remove()
                best, best_cost = note, cost
            else:
                note.remove()
        if np.hypot(*best.xyann) > 12:  # moved away from its point: draw a leader line
            best.remove()
            best = ax.annotate(text, (x, y), xytext=best.xyann, textcoords="offset pixels", ha=best.get_ha(),
                               va=best.get_va(), fontsize=fontsize, color=color,
                               arrowprops=dict(arrowstyle="-", color=color, lw=0.5, shrinkA=0, shrinkB=3))
        taken.append(best.get_window_extent(renderer).padded(1))
        annotations.append(best)
    return annotations


def _yerr(rows: dict, names: list[str], key: str, ci_key: str) -> np.ndarray:
    """Error bar lengths from the intervals; clipped at 0 (a percentile interval may miss its point estimate)."""
    return np.array([[max(rows[n][key] - rows[n][ci_key][0], 0.0), max(rows[n][ci_key][1] - rows[n][key], 0.0)]
                     for n in names]).T


ZOOM_PPL_FACTOR = 1.8  # the zoomed panel spans plain GPTQ up to this multiple of its perplexity
ZOOM_MIN_POINTS = 3  # variants besides plain GPTQ that must lie in that range for the panel to be drawn


def _zoom_range(rows: dict) -> tuple[float, float] | None:
    """x-limits of the panel around the crowded low-alpha points; None when nothing lies beyond that range or
    fewer than ZOOM_MIN_POINTS variants besides plain GPTQ lie in it."""
    if "gptq" not in rows:
        return None
    low, high = rows["gptq"]["ppl"] / 1.05, rows["gptq"]["ppl"] * ZOOM_PPL_FACTOR  # FP stays on the full panel
    crowded = sum(low <= r["ppl"] <= high for n, r in rows.items() if n != "gptq")
    if max(r["ppl"] for r in rows.values()) <= high or crowded < ZOOM_MIN_POINTS:
        return None  # one panel shows everything, or the range holds too few points to be worth a panel
    return low, high


def _draw_panel(ax, summary: dict, rows: dict, degradation: list[str], key: str, ci_key: str,
                xlim: tuple[float, float] | None, labelled) -> list[tuple[float, float, str, str]]:
    """Curves, reference points and error bars on one axes; returns the alpha labels of the points whose
    perplexity `labelled` accepts (the full panel leaves the zoomed region's labels to the zoom panel)."""
    if len(degradation) >= 2:  # the comparison curve of the matched-perplexity table, as interpolated
        ax.plot([rows[n]["ppl"] for n in degradation], [rows[n][key] for n in degradation], color="grey",
                ls="--", lw=1, label="degradation (no pair term)")
    labels = []
    for mode, (color, marker) in CURVE_STYLE.items():
        members = [n for n in summary["curves"].get(mode, []) if n in rows]
        own = [n for n in members if rows[n]["kind"] == "curve"]
        if not own:
            continue
        ax.plot([rows[n]["ppl"] for n in members], [rows[n][key] for n in members], color=color, lw=1.2)
        ax.errorbar([rows[n]["ppl"] for n in own], [rows[n][key] for n in own], yerr=_yerr(rows, own, key, ci_key),
                    color=color, marker=marker, capsize=3, ls="none", label=mode)
        labels += [(rows[n]["ppl"], rows[n][key], f"α={rows[n]['alpha']:g}", color) for n in own
                   if labelled(rows[n]["ppl"])]
    for name, marker, label in REFERENCE_STYLE:
        if name in rows:
            r = rows[name]
            ax.errorbar([r["ppl"]], [r[key]], yerr=_yerr(rows, [name], key, ci_key), color="black", marker=marker,
                        markersize=9, capsize=3, ls="none", label=label)
    ax.set_xscale("log")
    if xlim is not None:  # y-autoscaling would also fit the points outside the panel
        ax.set_xlim(*xlim)
        visible = [r for r in rows.values() if xlim[0] <= r["ppl"] <= xlim[1] and r[key] is not None]
        low = min(min(r[ci_key][0], r[key]) for r in visible)
        high = max(max(r[ci_key][1], r[key]) for r in visible)
        pad = 0.06 * (high - low or 1.0)
        ax.set_ylim(low - pad, high + pad)
    return labels


def write_plots(summary: dict, out: Path, title_prefix: str = "") -> list[str]:
    """One PNG per bias metric; returns the file names.

    When some variants lie far beyond plain GPTQ in perplexity, a second panel zooms on GPTQ ... 1.8x GPTQ, where
    the low-alpha points of every curve crowd together and cannot be told apart on the full axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    rows = {r["name"]: r for r in summary["variants"]}
    degradation = sorted((n for n in DEGRADATION if n in rows), key=lambda n: rows[n]["ppl"])
    zoom = _zoom_range(rows)

    def in_zoom(ppl):
        return zoom is not None and zoom[0] <= ppl <= zoom[1]

    panels = [(None, lambda ppl: not in_zoom(ppl))] + ([(zoom, in_zoom)] if zoom else [])
    names = []
    for metric, key, ci_key in (("crows", "crows_pct_stereotype", "crows_ci"), ("ss", "stereoset_ss", "stereoset_ss_ci"),
                                ("lms", "stereoset_lms", "stereoset_lms_ci")):
        fig, axes = plt.subplots(1, len(panels), figsize=(9 * len(panels) + 3, 7), squeeze=False)
        axes = list(axes[0])
        all_labels = [_draw_panel(ax, summary, rows, degradation, key, ci_key, xlim, labelled)
                      for ax, (xlim, labelled) in zip(axes, panels)]
        for ax, (xlim, _) in zip(axes, panels):
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            if xlim is not None:  # a narrow log axis has few decades: label the minor ticks as well
                ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            if metric != "lms":
                ax.axhline(50, color="grey", lw=0.8, ls=":")
            ax.set_xlabel("WikiText-2 perplexity (log scale)")
            ax.set_ylabel(analysis.METRIC_LABEL[metric] + " (95 % CI)")
            ax.set_title(("all variants" + ("; α labels of the shaded range: right" if zoom else "")) if xlim is None
                         else f"zoom: plain GPTQ to {ZOOM_PPL_FACTOR:g} × its perplexity")
        if zoom:
            axes[0].axvspan(*zoom, color="0.92", zorder=0)
        fig.suptitle(f"{title_prefix}{analysis.METRIC_LABEL[metric]} against perplexity; "
                     "curves start at plain GPTQ (α=0)")
        axes[-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        fig.tight_layout()
        for ax, labels in zip(axes, all_labels):
            place_labels(ax, labels)
        name = f"bias_vs_ppl_{metric}.png"
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        names.append(name)
    return names


SUITE_PANELS = (("bbq_accuracy_amb", "BBQ accuracy, ambiguous items (%)"),
                ("bbq_amb_bias_score", "BBQ bias score, ambiguous (× 100; ideal 0)"),
                ("bbq_disamb_bias_score", "BBQ bias score, disambiguated (× 100; ideal 0)"),
                ("winogender_all", "Winogender accuracy (%)"))


def _curve_of(name: str) -> tuple[str | None, str | None]:
    """(mode, alpha) of a curve variant's name (`stereo-anti-a0.3`), (None, None) for any other."""
    head, sep, alpha = name.rpartition("-a")
    return (head, alpha) if sep and head in CURVE_STYLE and alpha.replace(".", "", 1).isdigit() else (None, None)


def write_suite_plot(summary: dict, out: Path, axis: str = "piqa", title_prefix: str = "") -> str | None:
    """suite_vs_piqa.png: the suite's bias measures against zero-shot accuracy on `axis`, the second degradation
    axis; every variant with its 95 % intervals on both axes, the degradation references joined in their order
    from FP. None (nothing written) without two variants or without any of the panels' measures."""
    rows = {r["variant"]: r for r in summary["variants"] if axis in r}
    if len(rows) < 2 or not any(key in r for r in rows.values() for key, _ in SUITE_PANELS):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def bars(name, key):
        value, (low, high) = 100 * rows[name][key]["value"], rows[name][key]["ci"]
        return value, [[max(value - 100 * low, 0.0)], [max(100 * high - value, 0.0)]]

    fig, axes = plt.subplots(2, 2, figsize=(13, 11))
    degradation = [n for n in DEGRADATION if n in rows]
    all_labels = []
    for ax, (key, label) in zip(axes.flat, SUITE_PANELS):
        present = [n for n in rows if key in rows[n]]
        all_labels.append([])
        if not present:
            ax.set_axis_off()
            ax.set_title(f"{label}: not measured")
            continue
        curve = [n for n in degradation if n in present]
        if len(curve) >= 2:
            ax.plot([100 * rows[n][axis]["value"] for n in curve],
                    [100 * rows[n][key]["value"] for n in curve], color="grey", ls="--", lw=1,
                    label="degradation (no pair term)")
        labels = []
        for name in present:
            x, xerr = bars(name, axis)
            y, yerr = bars(name, key)
            reference = next((r for r in REFERENCE_STYLE if r[0] == name), None)
            mode, alpha = _curve_of(name)
            if reference is not None:
                ax.errorbar([x], [y], xerr=xerr, yerr=yerr, color="black", marker=reference[1], markersize=9,
                            capsize=3, ls="none", label=reference[2])
            elif mode is not None:
                color, marker = CURVE_STYLE[mode]
                ax.errorbar([x], [y], xerr=xerr, yerr=yerr, color=color, marker=marker, capsize=3, ls="none",
                            label=mode)
                labels.append((x, y, f"α={alpha}", color))
            else:  # an eraser or another variant: grey, named
                ax.errorbar([x], [y], xerr=xerr, yerr=yerr, color="0.4", marker="o", capsize=3, ls="none")
                labels.append((x, y, name, "0.3"))
        if key.endswith("bias_score"):
            ax.axhline(0, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(f"{axis} accuracy (%), 95 % CI")
        ax.set_ylabel(label)
        ax.invert_xaxis()  # degradation runs to the right, as perplexity does in the first stage's plots
        all_labels[-1] = labels
    legend = {}
    for ax in axes.flat:  # one legend for the four panels
        for handle, text in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(text, handle)
    fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=min(len(legend), 4), fontsize=9)
    fig.suptitle(f"{title_prefix}the offline lm-eval suite against {axis} accuracy (lower accuracy to the right)")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    for ax, labels in zip(axes.flat, all_labels):
        if labels:
            place_labels(ax, labels, fontsize=9)
    name = f"suite_vs_{axis}.png"
    fig.savefig(out / name, dpi=120)
    plt.close(fig)
    return name


DRAW_PANELS = (("crows", "CrowS-Pairs: Δ |% − 50|"), ("ss", "StereoSet: Δ |SS − 50|"))


def write_draws_plot(report: dict, out: Path) -> str:
    """draws.png: a forest plot per score, method − control in distance from 50, one row per calibration draw
    (95 % item interval) and the pooled row (95 % interval with the draw included); left of 0 = the method is
    closer to 50."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["per_draw"]
    fig, axes = plt.subplots(1, len(DRAW_PANELS), figsize=(11, 1.2 + 0.6 * (len(rows) + 1)), sharey=True)
    labels = [f"draw, seed {row['seed']}" for row in rows] + [f"pooled over {report['k']} draws"]
    for ax, (metric, title) in zip(axes, DRAW_PANELS):
        entries = [row[f"diff_{metric}"]["distance"] for row in rows] + [report["pooled"][f"{metric}_distance"]]
        for y, entry in enumerate(entries):
            low, high = entry["ci"]
            pooled = y == len(rows)
            ax.errorbar([entry["diff"]], [y], xerr=[[entry["diff"] - low], [high - entry["diff"]]],
                        color="tab:red" if pooled else "black", marker="D" if pooled else "o", capsize=4)
        ax.axvline(0, color="grey", lw=0.8, ls=":")
        ax.set_title(title, fontsize=11)
        ax.set_xlabel(f"{report['method']} − {report['control']} (points; < 0: method closer to 50)")
    axes[0].set_yticks(range(len(labels)), labels)
    axes[0].invert_yaxis()
    fig.suptitle("Calibration draws: 95 % intervals (draws: items only; pooled: items and draws)", fontsize=12)
    fig.tight_layout()
    fig.savefig(out / "draws.png", dpi=120)
    plt.close(fig)
    return "draws.png"
