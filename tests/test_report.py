"""A study's numbers and their rendering, without training: synthetic predictions go through the
analysis (contrast families, levels), report.md and RESULTS.md's summary, for studies with and without
placements, a positive control, unlearning (--sample 0) and several training seeds."""
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from sisa import analysis, report, results, stats
from sisa.data import RACES
from sisa.errors import SisaError
from sisa.layout import StudyLayout, SummaryLayout
from sisa.partition import GROUPS

# top-1 chance per race of each configuration's synthetic model (white, black, asian, indian, other)
SKILL = {"baseline": (0.8, 0.7, 0.75, 0.75, 0.7), "uniform": (0.7, 0.6, 0.65, 0.65, 0.6),
         "few-shards": (0.7, 0.6, 0.65, 0.65, 0.6), "later-slices": (0.72, 0.6, 0.65, 0.64, 0.6),
         "control": (0.7, 0.2, 0.65, 0.65, 0.6)}
SISA = ("uniform", "few-shards", "later-slices", "control")


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


def run_sets(configs, seeds: int, after: bool) -> dict:
    """What analysis.analyse_test reads of each configuration's runs (RunSet), from synthetic predictions."""
    f = faces()
    sets = {}
    for k, tag in enumerate(configs):
        names = [f"toy-kfold-{tag}" + (f"-seed{s}" if s else "") for s in range(seeds)]
        served = after and tag in SISA
        sets[tag] = SimpleNamespace(
            names=names, before=[predictions(f, SKILL[tag], 10 * k + s) for s in range(seeds)],
            after=[predictions(f, SKILL[tag], 100 + 10 * k + s) for s in range(seeds)] if served else None,
            after_names=[f"{n}-unlearned2" for n in names] if served else None, sisa=tag in SISA,
            summaries_dir=None, exps=[SimpleNamespace(partitions=None)])
    return sets


def fake_unlearning(rs) -> dict:
    cost = {"speedup_vs_baseline": 2.5, "expected_share_of_full": 0.3}
    served = rs.after is not None
    return {"slice_epochs": "sisa", "expected": {"shared": cost, "independent": cost},
            "expected_sisa_schedule": {"shared": cost, "independent": cost},
            "batches": {"shared": {"5": {"shards_retrained": 2.1, "batch_share_of_full": 0.4}}, "independent": {}},
            "served": {"requests": 2 if served else 0, "share_of_full": 0.25 if served else None,
                       "speedup_vs_baseline": 3.0 if served else None, "wall_seconds_per_request": 4.0 if served else None,
                       "training_seconds_per_fold": 10.0, "verified": True if served else None}}


def study_report(monkeypatch, configs, seeds=1, after=True, control_race="black") -> dict:
    """A whole report.json as study.py writes it, the test's part made by analysis.analyse_test."""
    monkeypatch.setattr(analysis, "aggregations", lambda rs, d: {m: {g: 0.6 for g in GROUPS} for m in ("sum_logits", "vote")})
    monkeypatch.setattr(analysis, "unlearning", fake_unlearning)
    monkeypatch.setattr(analysis, "composition_shares", lambda parts: pd.DataFrame(
        {label: {**{r: 0.2 for r in RACES}, "share": 0.25} for label in analysis.POSTER_COMPOSITION}).T)
    sets = run_sets(configs, seeds, after)
    t = analysis.analyse_test("kfold", sets, 60, control_race)
    settings = {"name": "toy", "preset": "cpu", "image_size": 32, "model": "cnn-max", "weights": "none", "recipe": "strong",
                "epochs": 1, "slice_epochs": "sisa", "folds": 2, "tests": ["kfold"], "seeds": seeds, "sample": 1 if after else 0,
                "control": "control" in configs, "configs": [c for c in configs if c != "control"], "num_shards": 5,
                "num_slices": 3, "control_race": control_race, "n_boot": 60, "limit": None}
    versions = {"python": "3", "torch": "2", "torchvision": "0", "numpy": "2", "pandas": "3", "git_commit": "abc"}
    return {"study": "toy", "settings": settings,
            "machine": {"device": "cpu", "cpus": 2, "torch_threads": 2, "platform": "x", "versions": versions},
            "timings": {n: {"train": 1.0, "evaluate": 2.0} for rs in sets.values() for n in rs.names},
            "poster": {"top1": analysis.POSTER, "composition": analysis.POSTER_COMPOSITION}, "tests": {"kfold": t},
            "seconds_total": 60.0, "figures": {"kfold": {}}}


def test_contrast_families_of_synthetic_accuracies():
    f = faces()
    reps = stats.Replicates(f, "kfold", 80)
    acc = {tag: reps.group_acc(stats.hits(predictions(f, SKILL[tag], k), f)) for k, tag in enumerate(SKILL)}
    after = {"uniform": reps.group_acc(stats.hits(predictions(f, SKILL["uniform"], 99), f))}
    fams = {k: [stats.Contrast.from_dict(d) for d in v] for k, v in analysis.contrast_families(acc, after, "black").items()}
    assert list(fams) == ["placement vs uniform", "placement vs uniform, by group", "control vs uniform",
                          "control vs uniform, by group", "vs baseline", "vs baseline, by group",
                          "after vs before unlearning", "after vs before unlearning, by group"]
    best, worst = stats.reference_identities(acc["uniform"])
    for name, cs in fams.items():
        assert cs and all(c.family == name for c in cs) and all(c.primary == ("by group" not in name) for c in cs)
        assert all(c.verdict and c.outcome for c in cs)
    placed = fams["placement vs uniform"]
    assert [(c.run, c.statistic) for c in placed] == [("few-shards", "gap (others - worst)"), ("few-shards", "worst race"),
                                                      ("later-slices", "gap (others - worst)"), ("later-slices", "worst race")]
    assert {(c.reference, c.best, c.worst, c.phase) for c in placed} == {("uniform", best, worst, "before")}
    # the detectable change is that of a family of 4 tests, Holm over the 4
    assert placed[0].detectable == pytest.approx(stats.detectable(placed[0].se, 4))
    by = fams["placement vs uniform, by group"]
    assert [c.group for c in by if c.run == "few-shards" and c.statistic == "top1"] == list(GROUPS)
    # the control is built against black: black is its worst race, whatever uniform's estimate says
    assert {c.worst for c in fams["control vs uniform"]} == {"black"}
    assert next(c for c in fams["control vs uniform"] if c.statistic == "gap (others - worst)").outcome == "widened"
    assert {c.run for c in fams["vs baseline"]} == {"uniform", "few-shards", "later-slices", "control"}
    # after unlearning: the run against itself before, with its own identities
    a = fams["after vs before unlearning"]
    assert {(c.run, c.phase, c.reference) for c in a} == {("uniform", "after", "uniform")}
    # every number of a paired contrast is the difference of the two accuracy arrays
    top1_white = next(c for c in by if c.run == "later-slices" and c.group == "white")
    col = GROUPS.index("white")
    assert top1_white.change == pytest.approx(acc["later-slices"][0, col] - acc["uniform"][0, col])


def test_contrast_families_without_placements_control_or_unlearning():
    f = faces()
    reps = stats.Replicates(f, "kfold", 50)
    acc = {tag: reps.group_acc(stats.hits(predictions(f, SKILL[tag], k), f)) for k, tag in enumerate(("baseline", "uniform"))}
    fams = analysis.contrast_families(acc, {}, "black")
    assert list(fams) == ["placement vs uniform", "placement vs uniform, by group", "vs baseline", "vs baseline, by group"]
    assert fams["placement vs uniform"] == [] and len(fams["vs baseline"]) == 2
    json.dumps(fams, allow_nan=False)                                           # plain JSON


CASES = {   # configurations, seeds, unlearning served
    "everything, two seeds": (("baseline", "uniform", "few-shards", "later-slices", "control"), 2, True),
    "no few-shards, no control, --sample 0": (("baseline", "uniform", "later-slices"), 1, False),
    "no placement, one seed": (("baseline", "uniform"), 1, True),
    "few-shards only, a control": (("baseline", "uniform", "few-shards", "control"), 1, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_report_md_and_results_summary_render_what_the_study_has(case, monkeypatch, tmp_path):
    configs, seeds, after = CASES[case]
    data = study_report(monkeypatch, configs, seeds, after)
    json.dumps(data, allow_nan=False)                                           # report.json is plain JSON
    t = data["tests"]["kfold"]
    md = report.render(json.loads(json.dumps(data)))
    placements = [c for c in ("few-shards", "later-slices") if c in configs]
    assert ("## The answer: placement versus uniform SISA" in md) == bool(placements)
    for tag in placements:
        row = next(line for line in md.splitlines() if line.startswith(f"| {report.CONFIG_TITLES[tag]} | "))
        gap = stats.Contrast.from_dict(next(d for d in t["contrasts"]["placement vs uniform"]
                                            if d["run"] == tag and d["statistic"] == "gap (others - worst)"))
        assert f"{100 * gap.change:+.1f} [{100 * gap.ci_low:+.1f}, {100 * gap.ci_high:+.1f}] | {gap.verdict} |" in row
    assert ("## Positive control" in md) == ("control" in configs)
    assert ("## Fairness after the served requests" in md) == after
    assert ("between-seed SD of the gap" in md) == (seeds > 1)
    assert "## SISA versus the monolithic baseline" in md and "nan" not in md and "None" not in md
    served = next(line for line in md.splitlines() if line.startswith("| uniform | 2.50x"))
    assert served.endswith("| 2: 25.0%, 4.0 s (verified) |" if after else "| none (`--sample 0`) |")
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
        predictions(f, SKILL["uniform"], 0).to_csv(out.predictions, index=False)
        kept = f.iloc[drop:]
        np.savez(out.logits, shard_logits=np.zeros((2, len(kept), 7), np.float32), fold=kept["fold"].to_numpy(),
                 filename=kept["filename"].to_numpy().astype(str))
    layout = StudyLayout(tmp_path / "study")
    data = {"tests": {"kfold": {"runs": {"uniform": {"before": ["good"], "after": None}}}}}
    pred = predictions(f, SKILL["uniform"], 0)
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
    data = study_report(monkeypatch, ("baseline", "uniform", "later-slices", "control"), 1, True)
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
    worst = next(c["worst"] for c in t["contrasts"]["after vs before unlearning"] if c["run"] == "later-slices")
    assert f"later-slices after vs later-slices: gap (others - {worst})" in names
    plt.close("all")
