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
