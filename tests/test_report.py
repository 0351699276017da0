"""Reports written before replicates (format 1, reports/published/): report.md and RESULTS.md's
summary rendered from the committed report cut down to studies with and without placements, a
positive control, unlearning (--sample 0) and several training seeds; and the per-face predictions."""
import json

import numpy as np
import pandas as pd
import pytest

from sisa import report, results, stats
from sisa.data import RACES
from sisa.errors import SisaError
from sisa.layout import PROJECT_ROOT, StudyLayout, SummaryLayout
from sisa.partition import GROUPS

PUBLISHED = PROJECT_ROOT / "reports" / "published" / "cpu" / "report.json"    # a study from before replicates
SKILL = (0.7, 0.6, 0.65, 0.65, 0.6)      # a synthetic model's top-1 chance per race (white ... other)


def faces(per_cell: int = 12, folds: int = 2) -> pd.DataFrame:
    """k-fold-style test faces: every race in age classes 3 and 4, all in group 'random'."""
    rows = [(f, f"{r}-{c}-{i}-{f}.jpg", code, c, "random") for f in range(folds) for code, r in enumerate(RACES)
            for c in (3, 4) for i in range(per_cell)]
    return stats.test_faces(pd.DataFrame(rows, columns=["fold", "filename", "race", "age_class", "group"]).assign(
        model="ensemble"))                                                  # in the study's canonical order


def predictions(test_faces: pd.DataFrame, skill, seed: int) -> pd.DataFrame:
    """The ensemble's predictions (a summary's -predictions.csv) of a model right with these chances."""
    g = np.random.default_rng(seed)
    right = g.random(len(test_faces)) < np.asarray(skill)[test_faces["race"].to_numpy()]
    y = test_faces["age_class"].to_numpy()
    return test_faces.assign(model="ensemble", pred1=np.where(right, y, (y + 1) % 7), pred2=(y + 2) % 7)


def study_report(configs, seeds=3, after=True) -> dict:
    """The committed format-1 report cut down to a study that ran only `configs`, with `seeds` seeds
    and (`after`) or without (--sample 0) served requests: what sisa/report.py still renders."""
    data = json.loads(PUBLISHED.read_text())
    t, keep = data["tests"]["kfold"], set(configs)
    for key in ("levels", "per_class", "aggregations", "unlearning", "runs", "levels_after"):
        t[key] = {tag: v for tag, v in t[key].items() if tag in keep}
    t["contrasts"] = {fam: [c for c in cs if c["run"].removesuffix(" after") in keep and c["reference"] in keep]
                      for fam, cs in t["contrasts"].items() if not (fam.startswith("after") and not after)}
    t["contrasts"] = {fam: cs for fam, cs in t["contrasts"].items() if cs}
    t["collapsed"] = [c for c in t["collapsed"] if c["config"] in keep]
    if not after:
        del t["levels_after"]
        for tag, u in t["unlearning"].items():
            u["served"] = {**u["served"], "requests": 0, "share_of_full": None, "speedup_vs_baseline": None,
                           "wall_seconds_per_request": None, "verified": None}
        t["runs"] = {tag: {**r, "after": None} for tag, r in t["runs"].items()}
    data["settings"] = {**data["settings"], "seeds": seeds, "sample": 1 if after else 0, "control": "control" in keep,
                        "configs": [c for c in configs if c != "control"]}
    return data


CASES = {   # configurations, seeds, unlearning served
    "everything, three seeds": (("baseline", "uniform", "few-shards", "later-slices", "control"), 3, True),
    "no few-shards, no control, --sample 0": (("baseline", "uniform", "later-slices"), 1, False),
    "no placement, one seed": (("baseline", "uniform"), 1, True),
    "few-shards only, a control": (("baseline", "uniform", "few-shards", "control"), 1, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_report_md_and_results_summary_render_what_the_study_has(case, monkeypatch, tmp_path):
    configs, seeds, after = CASES[case]
    data = study_report(configs, seeds, after)
    json.dumps(data, allow_nan=False)                                           # report.json is plain JSON
    t = data["tests"]["kfold"]
    md = report.render(json.loads(json.dumps(data)))
    placements = [c for c in ("few-shards", "later-slices") if c in configs]
    assert ("## The answer: placement versus uniform SISA" in md) == bool(placements)
    for tag in placements:
        row = next(line for line in md.splitlines() if line.startswith(f"| {report.CONFIG_TITLES[tag]} | "))
        gap = stats.Contrast.from_dict(next(d for d in t["contrasts"]["placement vs uniform"]
                                            if d["run"] == tag and d["statistic"].startswith("gap (others - ")))
        assert f"{100 * gap.change:+.1f} [{100 * gap.ci_low:+.1f}, {100 * gap.ci_high:+.1f}] | {gap.verdict} |" in row
    assert ("## Positive control" in md) == ("control" in configs)
    assert ("## Fairness after the served requests" in md) == after
    assert ("between-seed SD of the gap" in md) == (seeds > 1)
    assert "## SISA versus the monolithic baseline" in md and "nan" not in md and "None" not in md
    u = t["unlearning"]["uniform"]
    served = next(line for line in md.splitlines()
                  if line.startswith(f"| uniform | {u['expected']['shared']['speedup_vs_baseline']:.2f}x"))
    assert served.endswith("(verified) |" if after else "| none (`--sample 0`) |")
    if after:
        row = next(line for line in md.splitlines() if line.startswith("| uniform | ") and "→" in line)
        before, later = (t[k]["uniform"]["gap (best - worst)"]["value"] for k in ("levels", "levels_after"))
        assert f"| {100 * before:.1f} → {100 * later:.1f} |" in row
    # RESULTS.md's summary of the same report: what is there, nothing that is not
    layout = StudyLayout(tmp_path / "toy")
    layout.root.mkdir()
    layout.report_json.write_text(json.dumps(data))
    summary = results.summary_section([layout.root])
    assert ("Placement versus uniform SISA" in summary) == bool(placements) and ("No placement was run" in summary) != bool(placements)
    for tag in placements:
        assert f"{report.CONFIG_TITLES[tag]} " in summary
    assert ("The positive control" in summary) == ("control" in configs)
    assert ("After the served requests" in summary) == after


def test_a_summary_whose_logits_lack_a_test_face_is_an_error(tmp_path):
    """save_predictions aligns every run's logits with the study's test faces by (fold, file): a face
    the logits lack is a clear error, never the last face's logits (get_indexer's -1)."""
    f = faces(per_cell=2, folds=1)
    sums = tmp_path / "summaries"
    sums.mkdir()
    for name, drop in (("good", 0), ("short", 1)):
        out = SummaryLayout(sums, name)
        predictions(f, SKILL, 0).to_csv(out.predictions, index=False)
        kept = f.iloc[drop:]
        np.savez(out.logits, shard_logits=np.zeros((2, len(kept), 7), np.float32), fold=kept["fold"].to_numpy(),
                 filename=kept["filename"].to_numpy().astype(str))
    layout = StudyLayout(tmp_path / "study")
    data = {"tests": {"kfold": {"runs": {"uniform": {"before": ["good"], "after": None}}}}}
    pred = predictions(f, SKILL, 0)
    for s in range(2):     # the shard models' rows, as evaluate.py writes them
        pred = pd.concat([pred, pred[pred["model"] == "ensemble"].assign(model=f"shard-{s}")])
    for name in ("good", "short"):
        pred.to_csv(SummaryLayout(sums, name).predictions, index=False)
    saved = report.save_predictions(layout, data, sums)
    assert set(saved) == {"good"}
    data["tests"]["kfold"]["runs"]["uniform"]["after"] = ["short"]
    missing = f.iloc[0]                                      # the face the second summary's logits lack
    with pytest.raises(SisaError, match=f"short-logits.npz lacks 1 of the study's {len(f)} kfold test faces "
                                        rf"\(e.g. fold 0, {missing['filename']}\)"):
        report.save_predictions(layout, data, sums)


def test_the_figures_label_rows_and_bars_in_the_order_of_their_data(monkeypatch, tmp_path):
    """The heatmap's rows are the original's square order (races, then random), the bars GROUPS' order,
    and the contrast chart names a run after unlearning as such."""
    import matplotlib.pyplot as plt

    from sisa import plots
    from sisa.data import AGE_CLASSES
    from sisa.fairness import ORIGINAL_GROUPS
    data = study_report(("baseline", "uniform", "later-slices", "control"), 1, True)
    figs = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.setdefault(path.name, fig) and path)
    report.figures(StudyLayout(tmp_path), data, tmp_path)
    t = data["tests"]["kfold"]
    heat = figs["kfold-control-heatmap.png"].axes[0]
    assert [x.get_text() for x in heat.get_yticklabels()] == list(ORIGINAL_GROUPS)
    drawn = heat.images[0].get_array()
    for i, g in enumerate(ORIGINAL_GROUPS):
        expected = [np.nan if t["per_class"]["control"][g][c] is None else 100 * t["per_class"]["control"][g][c]
                    for c in AGE_CLASSES]
        assert np.allclose(np.ma.filled(drawn[i].astype(float), np.nan), expected, equal_nan=True), g
    bars = figs["kfold-accuracy.png"].axes[0]
    assert [x.get_text() for x in bars.get_xticklabels()] == list(GROUPS)
    names = [x.get_text() for x in figs["kfold-contrasts.png"].axes[0].get_yticklabels()]
    worst = next(stats.Contrast.from_dict(c).worst for c in t["contrasts"]["after vs before unlearning"]
                 if c["run"].startswith("later-slices"))
    assert f"later-slices after vs later-slices: gap (others - {worst})" in names
    plt.close("all")
