"""The study plots: label placement never overlaps, the zoom panel covers the crowded low-alpha points."""
import itertools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from study import plots as study_plots  # noqa: E402


def _boxes_overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_place_labels_keeps_crowded_labels_apart_and_inside():
    fig, ax = plt.subplots(figsize=(6, 4))
    # nine points within a few pixels of each other, as the alpha = 0.1 points of four curves sit near GPTQ
    points = [(40 + 0.3 * i, 54 + 0.05 * (i % 3), f"α={a:g}", "C0") for i, a in enumerate([0.1, 0.3, 1] * 3)]
    ax.plot([p[0] for p in points], [p[1] for p in points], "o")
    ax.set_xlim(30, 60)
    ax.set_ylim(50, 58)
    notes = study_plots.place_labels(ax, points)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    # the text itself (an Annotation's own extent also covers its leader line, which may cross other lines)
    boxes = [Text.get_window_extent(n, renderer) for n in notes]
    frame = ax.get_window_extent(renderer)
    assert len(notes) == len(points)
    assert len(ax.texts) == len(points)  # no candidate tried on the way is left drawn
    for a, b in itertools.combinations(boxes, 2):
        assert not _boxes_overlap(a, b)
    for box in boxes:
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
    plt.close(fig)


def _row(name, ppl):
    return {"name": name, "ppl": ppl}


def test_zoom_range_from_plain_gptq_only_when_points_lie_beyond():
    rows = {n: _row(n, p) for n, p in [("fp", 20.0), ("gptq", 40.0), ("a", 60.0), ("c", 45.0), ("d", 70.0),
                                       ("b", 500.0)]}
    low, high = study_plots._zoom_range(rows)
    assert low == pytest.approx(40.0 / 1.05) and high == pytest.approx(72.0)  # 1.8 x 40
    near = {n: _row(n, p) for n, p in [("fp", 20.0), ("gptq", 40.0), ("a", 70.0)]}
    assert study_plots._zoom_range(near) is None  # nothing beyond 72: one panel shows everything
    assert study_plots._zoom_range({"fp": _row("fp", 20.0), "a": _row("a", 900.0)}) is None  # no GPTQ to zoom on
    sparse = {n: _row(n, p) for n, p in [("fp", 20.0), ("gptq", 40.0), ("a", 60.0), ("c", 45.0), ("b", 500.0)]}
    assert study_plots._zoom_range(sparse) is None  # two points near GPTQ (FP is below the range) need no panel


def _suite_row(name, piqa, amb):
    cell = lambda v: {"value": v, "ci": [v - 0.02, v + 0.02]}  # noqa: E731
    return {"variant": name, "piqa": cell(piqa), "bbq_accuracy_amb": cell(amb), "bbq_amb_bias_score": cell(0.01),
            "bbq_disamb_bias_score": cell(-0.02), "winogender_all": cell(0.5)}


def test_suite_plot_is_written_with_every_variant(tmp_path):
    from study import plots

    summary = {"variants": [_suite_row("fp", 0.65, 0.2), _suite_row("gptq", 0.62, 0.36),
                            _suite_row("stereo-anti-a1", 0.58, 0.9), _suite_row("inlp-fp", 0.64, 0.25)]}
    assert plots.write_suite_plot(summary, tmp_path) == "suite_vs_piqa.png"
    assert (tmp_path / "suite_vs_piqa.png").stat().st_size > 10_000
    assert plots.write_suite_plot({"variants": summary["variants"][:1]}, tmp_path / "none") is None
    assert plots._curve_of("stereo-anti-a0.3") == ("stereo-anti", "0.3")
    assert plots._curve_of("direction-sign-shuffled-a1") == ("direction-sign-shuffled", "1")
    assert plots._curve_of("inlp-fp") == (None, None) and plots._curve_of("gptq-3bit") == (None, None)
