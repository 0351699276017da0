"""The figures: the poster's bar chart, race x age-class heatmaps, slice composition, unlearning cost.

Every function takes plain data (Series, arrays, DataFrames) and writes one PNG atomically.
"""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")   # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .data import AGE_CLASSES, RACES  # noqa: E402
from .partition import GROUPS, ORIGINAL_GROUPS  # noqa: E402
from .store import write_bytes  # noqa: E402

RACE_COLOURS = {"white": "#c774d8", "black": "#6f8fdc", "asian": "#7fd8a8", "indian": "#c9df7a", "other": "#e0736e"}


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    write_bytes(Path(path), buf.getvalue())
    return Path(path)


def bar_chart(top1: dict[str, pd.Series], decrease: dict[str, pd.Series], path: Path,
              title: str = "Top-1 accuracy per group (mean of age classes, mean over folds)") -> Path:
    """Bars of top-1 % per group for each run; below zero, each race's decrease versus the best race."""
    runs = list(top1)
    width = 0.8 / len(runs)
    blues = plt.cm.GnBu(np.linspace(0.95, 0.45, len(runs)))
    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(GROUPS) * len(runs) / 2), 4.5))
    x = np.arange(len(GROUPS))
    for i, run in enumerate(runs):
        up = [100 * top1[run].get(g, np.nan) for g in GROUPS]
        down = [-100 * decrease[run].get(g, np.nan) for g in GROUPS]
        pos = x - 0.4 + width * (i + 0.5)
        bars = ax.bar(pos, up, width, color=blues[i], label=run)
        ax.bar(pos, down, width, color="0.6", label="decrease vs best race" if i == 0 else None)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, rotation=90, padding=2)
        for p, d in zip(pos, down):
            if np.isfinite(d) and d < -0.05:
                ax.text(p, d - 1, f"{d:.1f}", ha="center", va="top", fontsize=7, rotation=90)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, GROUPS)
    ax.set_ylabel("top-1 accuracy in %")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, ncol=2, loc="upper right", bbox_to_anchor=(1, 1.0))
    lows = [-100 * v.max() for v in decrease.values() if len(v)]
    ax.set_ylim(min(-5, min(lows, default=0) * 1.6), 115)
    return _save(fig, path)


def heatmap(square: np.ndarray, name: str, path: Path) -> Path:
    """Top-1 % per group (rows, in the order of the original's square: ORIGINAL_GROUPS) and age class (columns)."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    im = ax.imshow(100 * square, cmap="YlGnBu", vmin=0, vmax=100, aspect="auto")
    for i in range(square.shape[0]):
        for j in range(square.shape[1]):
            v = 100 * square[i, j]
            ax.text(j, i, "–" if np.isnan(v) else f"{v:.1f}", ha="center", va="center", fontsize=8,
                    color="white" if v > 60 else "black")
    ax.set_xticks(range(len(AGE_CLASSES)), AGE_CLASSES)
    ax.set_yticks(range(len(ORIGINAL_GROUPS)), ORIGINAL_GROUPS)
    ax.set_xlabel("age class")
    ax.set_title(f"{name}: top-1 accuracy in % by group and age class", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.03)
    return _save(fig, path)


def composition_chart(shares: pd.DataFrame, path: Path, title: str) -> Path:
    """Stacked bars: share of each race (columns) among high- and low-likelihood training faces (rows)."""
    fig, ax = plt.subplots(figsize=(8, 2.6))
    for i, (label, row) in enumerate(shares.iterrows()):
        left = 0.0
        for race in RACES:
            v = 100 * row[race]
            ax.barh(i, v, left=left, color=RACE_COLOURS[race], label=race if i == 0 else None, edgecolor="white")
            ax.text(left + v / 2, i, f"{v:.1f}%", ha="center", va="center", fontsize=8)
            left += v
    ax.set_yticks(range(len(shares)), [f"{k} ({100 * v:.1f}% of faces)" for k, v in shares["share"].items()])
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of the training faces of that likelihood")
    ax.set_title(title, fontsize=10)
    ax.legend(ncol=5, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.12), frameon=False)
    return _save(fig, path)


def cost_chart(table: pd.DataFrame, path: Path) -> Path:
    """Expected retraining cost per request (% of retraining all shards) against the fairness gap.

    A run without an evaluated summary has no gap: it is marked on the cost axis and labelled as
    missing, never drawn as a gap of 0 (which would look perfectly fair)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    have = table[table["gap"].notna()] if "gap" in table else table.iloc[:0]
    missing = table.drop(have.index)
    for _, r in have.iterrows():
        x, y = 100 * r["expected_cost_share"], 100 * r["gap"]
        ax.scatter(x, y, s=40)
        ax.annotate(r["run"], (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    along_axis = ax.get_xaxis_transform()    # x in data units, y in axes units: on the cost axis
    for i, (_, r) in enumerate(missing.iterrows()):
        x = 100 * r["expected_cost_share"]
        ax.plot([x], [0.0], marker="x", color="0.4", transform=along_axis, clip_on=False)
        ax.text(x, 0.04 + 0.06 * i, f"{r['run']}: no summary (gap unknown)", transform=along_axis, fontsize=7,
                color="0.4", rotation=0)
    ax.set_xlabel("expected retraining per request, % of retraining all shards")
    ax.set_ylabel("race accuracy gap (best - worst), points")
    ax.set_title("unlearning cost versus unfairness", fontsize=10)
    return _save(fig, path)


def contrast_chart(families: dict[str, list[dict]], path: Path) -> Path:
    """Changes (points) with 95% intervals of the gap and worst-race statistics, one row per comparison,
    grouped by family; the verdict beside each."""
    rows = [c for name, cs in families.items() if "by group" not in name for c in cs]
    fig, ax = plt.subplots(figsize=(8, 0.42 * max(3, len(rows)) + 1))
    for i, c in enumerate(reversed(rows)):
        colour = {"widened": "#c0392b", "narrowed": "#2471a3", "higher": "#2471a3", "lower": "#c0392b"}.get(c["verdict"], "0.35")
        ax.errorbar([100 * c["change"]], [i], xerr=[[100 * (c["change"] - c["ci_low"])], [100 * (c["ci_high"] - c["change"])]],
                    fmt="o", color=colour, capsize=3)
        ax.text(1.02, i, c["verdict"], transform=ax.get_yaxis_transform(), fontsize=7, va="center", color=colour)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)), [f"{c['run']} vs {c['reference']}: {c['statistic']}" for c in reversed(rows)],
                  fontsize=7)
    ax.set_xlabel("change in points (95% interval)")
    ax.set_title("Is unfairness changed? Paired changes of the gap and of the worst race", fontsize=10)
    return _save(fig, path)


def axis_reach(changes: list[float]) -> float:
    """Half the height of an axis of changes (points): room for the largest change four times over, at
    least 2 points. Intervals are not consulted: with few replicates at a strict level the typical one
    spans hundreds of points, and sizing the axis for it flattens every change to zero."""
    return max(4 * float(np.nanmax(np.abs(np.asarray(changes, float)), initial=0.0)), 2.0)


def forgetting_curves(rows: list[dict], reference: str, path: Path) -> Path:
    """Scenarios at a volume: the change of the gap from before (points, with its interval) against the
    volume forgotten, one line per scenario (side by side), one panel per configuration. `rows`: config,
    scenario, volume, change, ci_low, ci_high (fractions; None where there is no verdict). An interval
    far wider than the changes (few replicates at a strict level) is cut at the axis, its true ends
    written beside it, so it never flattens every line to zero."""
    configs = list(dict.fromkeys(r["config"] for r in rows))
    fig, axes = plt.subplots(1, len(configs), figsize=(3.6 * len(configs) + 0.6, 3.6), sharey=True, squeeze=False)
    colours = dict(zip(dict.fromkeys(r["scenario"] for r in rows), plt.cm.tab10.colors))
    pct = lambda x: np.nan if x is None else 100 * x            # noqa: E731
    reach = axis_reach([pct(r["change"]) for r in rows])
    volumes = sorted({100 * r["volume"] for r in rows})
    step = 0.12 * min(np.diff(volumes), default=volumes[0] if volumes else 1.0)
    cut = False
    for ax, config in zip(axes[0], configs):
        for k, (sc, colour) in enumerate(colours.items()):
            pts_ = sorted((r for r in rows if r["config"] == config and r["scenario"] == sc), key=lambda r: r["volume"])
            x = np.array([100 * r["volume"] for r in pts_]) + (k - (len(colours) - 1) / 2) * step
            y = np.array([pct(r["change"]) for r in pts_], float)
            lo = np.array([pct(r["ci_low"]) for r in pts_], float)
            hi = np.array([pct(r["ci_high"]) for r in pts_], float)
            ax.errorbar(x, y, yerr=[y - np.maximum(lo, -reach), np.minimum(hi, reach) - y], fmt="o-", capsize=3,
                        color=colour, label=sc)
            for xi, l, h in zip(x, lo, hi):
                if l < -reach or h > reach:
                    cut = True
                    ax.annotate(f"[{l:+.0f}, {h:+.0f}]", (xi, reach if h > reach else -reach), fontsize=6,
                                color=colour, rotation=90, ha="center", va="top" if h > reach else "bottom")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_ylim(-reach * 1.05, reach * 1.05)
        ax.set_title(config, fontsize=10)
        ax.set_xlabel("volume forgotten, % of training faces")
    axes[0][0].set_ylabel(f"change of the gap (others - {reference}), points")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle("Forgetting at volume: the gap after minus before, by who asks"
                 + (" (intervals cut at the axis: their ends written)" if cut else ""), fontsize=10)
    return _save(fig, path)


def forgetting_by_race(panels: dict[str, dict[str, dict[str, tuple]]], path: Path) -> Path:
    """Approximate unlearning: each method's membership AUC on the forget faces minus exact retraining's,
    by race (points of AUC x 100, with an interval), one panel per scenario and volume.
    `panels[title][method][race]` = (gap, low, high), fractions; None where there are no faces."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 0.6, 3.8), sharey=True, squeeze=False)
    for ax, (title_, methods) in zip(axes[0], panels.items()):
        width = 0.8 / max(1, len(methods))
        for i, (m, races) in enumerate(methods.items()):
            x = np.arange(len(RACES)) + (i - (len(methods) - 1) / 2) * width
            vals = [races.get(r) or (np.nan, np.nan, np.nan) for r in RACES]
            y = np.array([100 * v[0] if v[0] is not None else np.nan for v in vals], float)
            lo = np.array([100 * v[1] if v[1] is not None else np.nan for v in vals], float)
            hi = np.array([100 * v[2] if v[2] is not None else np.nan for v in vals], float)
            ax.bar(x, y, width, label=m, color=plt.cm.tab10.colors[i % 10])
            ax.errorbar(x, y, yerr=[y - lo, hi - y], fmt="none", ecolor="black", capsize=2, lw=0.8)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(np.arange(len(RACES)), RACES, fontsize=8)
        ax.set_title(title_, fontsize=9)
    axes[0][0].set_ylabel("forget-face AUC minus retrained's (x100)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("Is every race forgotten as well as exact retraining forgets it?", fontsize=10)
    return _save(fig, path)


def dose_response(rows: list[dict], reference: str, path: Path) -> Path:
    """The positive control's change of the gap (points, with its interval) against the dose of label
    noise on the reference race's training faces."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    x = [100 * r["dose"] for r in rows]
    y = [100 * r["change"] if r["change"] is not None else np.nan for r in rows]
    lo = [100 * r["ci_low"] if r["ci_low"] is not None else np.nan for r in rows]
    hi = [100 * r["ci_high"] if r["ci_high"] is not None else np.nan for r in rows]
    ax.errorbar(x, y, yerr=[np.subtract(y, lo), np.subtract(hi, y)], fmt="o-", capsize=3, color="#c0392b")
    for xi, yi, r in zip(x, y, rows):
        ax.annotate(r["outcome"], (xi, yi), textcoords="offset points", xytext=(4, 6), fontsize=7)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel(f"dose: % of {reference} training faces given a random age class")
    ax.set_ylabel(f"change of the gap (others - {reference}), points")
    ax.set_title("Positive control: what the study detects", fontsize=10)
    return _save(fig, path)
