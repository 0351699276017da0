"""The figures: what each one draws, read back from the figure before it is saved."""
import numpy as np
import pandas as pd

from sisa import plots


def drawn(monkeypatch, fn, *args):
    """Call a plotting function and return its matplotlib figure instead of only the PNG."""
    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig) or path)
    fn(*args)
    (fig,) = figs
    return fig


def test_a_run_without_a_summary_is_shown_as_missing_not_as_a_fair_run(monkeypatch, tmp_path):
    table = pd.DataFrame({"run": ["evaluated", "never-evaluated"], "expected_cost_share": [0.15, 0.12],
                          "gap": [0.08, np.nan]})
    ax = drawn(monkeypatch, plots.cost_chart, table, tmp_path / "c.png").axes[0]
    points = np.concatenate([c.get_offsets() for c in ax.collections])
    assert points.tolist() == [[15.0, 8.0]]                         # only the run with a gap is a point
    texts = [t.get_text() for t in ax.texts]
    assert "never-evaluated: no summary (gap unknown)" in texts and "evaluated" in texts
    assert not any(np.isclose(line.get_ydata(), 0).all() and line.get_transform() == ax.transData
                   for line in ax.lines)                              # nothing placed at a gap of 0


def test_an_interval_far_wider_than_the_changes_is_cut_at_the_axis_with_its_ends_written(monkeypatch, tmp_path):
    """Few replicates at a strict level give some intervals of hundreds of points; drawn whole they
    flatten every line to zero. The axis holds the changes; a wider interval is cut there and its true
    ends are written beside it. Scenarios at one volume stand side by side."""
    rows = [{"config": "uniform", "scenario": sc, "volume": v, "change": ch, "ci_low": lo, "ci_high": hi}
            for sc, v, ch, lo, hi in (("random", 0.05, -0.005, -0.02, 0.01), ("random", 0.1, -0.004, -0.015, 0.007),
                                      ("group:black", 0.05, 0.01, -0.01, 0.03), ("group:black", 0.1, 0.02, -3.0, 3.04))]
    fig = drawn(monkeypatch, plots.forgetting_curves, rows, "black", tmp_path / "f.png")
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert high == 1.05 * 4 * 2.0 and low == -high                    # room for every change, not for -300..+304
    assert [t.get_text() for t in ax.texts] == ["[-300, +304]"]       # the cut interval says where it ends
    assert "cut at the axis" in fig._suptitle.get_text()
    xs = sorted(float(x) for line in ax.lines for x in line.get_xdata() if line.get_marker() == "o")
    assert len(set(xs)) == 4                                          # no two scenarios drawn on top of each other
    assert plots.axis_reach([np.nan]) == 2.0                         # nothing to show: a 2-point axis, no error
