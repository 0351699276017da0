"""A study's report: report.json (every number), report.md rendered from it alone, figures, and the
per-face predictions of every run (small .npz files, so any contrast can be recomputed).

`render(report)` is a pure function of the JSON: the markdown never shows a number the JSON lacks,
and RESULTS.md is made from committed reports the same way (sisa.results). It reads records: the
contrasts as stats.Contrast (from_dict also reads reports written before the records), the levels by
their label (stats.level_label); nothing is parsed out of a formatted string.
"""
from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pandas as pd

from . import plots
from .analysis import analyse
from .data import AGE_CLASSES, RACES
from .errors import SisaError
from .layout import StudyLayout, SummaryLayout
from .partition import GROUPS, ORIGINAL_GROUPS
from .stats import Contrast, level_label
from .store import write_bytes, write_json, write_text

TEST_TITLES = {"kfold": "k-fold test (every face tested once, by the models of the fold that held it out)",
               "balanced": "balanced test (the original's: a fixed number of faces per race x age class, plus random faces)",
               "random": "random test faces"}
CONFIG_TITLES = {"baseline": "baseline 1x1", "uniform": "uniform", "few-shards": "few shards",
                 "later-slices": "later slices", "control": "positive control (label noise)",
                 "segregated": "segregated (one race in few shards)"}


def config_title(tag: str) -> str:
    """A configuration as tables name it: 'later slices', 'uniform, second arm (A/A)', 'positive control, dose 25%'."""
    if tag.startswith("control-"):
        return f"positive control, dose {tag.split('-', 1)[1]}%"
    return {**CONFIG_TITLES, "uniform-b": "uniform, second arm (A/A)"}.get(tag, tag)


def write_report(layout: StudyLayout, settings, opts, summaries_dir: Path, progress: dict,
                 seconds_total: float) -> Path:
    data = analyse(settings, opts.checkpoints_dir, summaries_dir, progress, opts.device)
    data["seconds_total"] = seconds_total
    data["figures"] = figures(layout, data, summaries_dir)
    data["predictions"] = save_predictions(layout, data, summaries_dir)
    write_json(layout.report_json, data, sort_keys=False)     # render() shows the dicts in their order
    write_text(layout.report_md, render(data))
    return layout.report_md


# ---- formatting ---------------------------------------------------------------------------------
def pct(x) -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{100 * x:.1f}"


def chg(x) -> str:
    return "–" if x is None else f"{100 * x:+.1f}"


def interval(lo, hi, signed: bool = False) -> str:
    f = chg if signed else pct
    return f"[{f(lo)}, {f(hi)}]"


def secs(x) -> str:
    return "–" if x is None else (f"{x:.0f} s" if x >= 10 else f"{x:.1f} s")


def table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def family(data_test: dict, name: str) -> list[Contrast]:
    """A family of contrasts of one test, as records (empty when the study did not make it)."""
    return [Contrast.from_dict(d) for d in data_test["contrasts"].get(name, [])]


def find(cs: list[Contrast], run: str, statistic: str, group: str | None = None) -> Contrast | None:
    """The contrast of `run` for `statistic` (stats.CONTRASTS) and, for "top1", `group`."""
    return next((c for c in cs if c.run == run and c.statistic == statistic and (group is None or c.group == group)), None)


def runs(cs: list[Contrast]) -> list[str]:
    """The configurations of a family, in its order."""
    return list(dict.fromkeys(c.run for c in cs))


def change(c: Contrast) -> str:
    return f"{chg(c.change)} {interval(c.ci_low, c.ci_high, True)}"


def level(levels: dict, statistic: str, group: str | None = None) -> dict:
    """One level record of a configuration (report.json's levels[tag])."""
    return levels[level_label(statistic, group)]


# ---- the markdown -------------------------------------------------------------------------------
def render(r: dict, figure_prefix: str = "", heading: int = 1) -> str:
    h = "#" * heading
    s = r["settings"]
    parts = [f"{h} Study `{r['study']}`: does likelihood-based placement change fairness?", "",
             summary_line(r), "", f"{h}# Settings", "", settings_table(r), "", f"{h}# Machine and time", "",
             machine_table(r), ""]
    for test, t in r["tests"].items():
        parts += [f"{h}# {TEST_TITLES.get(test, test).capitalize()}", "",
                  f"{t['faces']['tested']:,} test faces over {t['faces']['folds']} fold(s): "
                  + ", ".join(f"{n:,} {race}" for race, n in t["faces"]["per_race"].items()) + "."
                  + (f" Each fold's models train on the other folds' faces ({t['faces']['folds'] - 1}/"
                     f"{t['faces']['folds']} of them)." if test == "kfold" and t["faces"]["folds"] > 1 else ""), ""]
        parts += answer(t, h) + control(t, h, s["control_race"]) + accuracy(r, t, h) + versus_baseline(t, h) + after(t, h)
        parts += aggregations(t, h) + costs(t, s, h) + composition(r, t, h) + collapsed(t, h)
        parts += [f"{h}## Figures", ""] + [f"![{k}]({figure_prefix}{v})" for k, v in r["figures"].get(test, {}).items()] + [""]
    parts += method(r, h)
    return "\n".join(parts).rstrip() + "\n"


def summary_line(r: dict) -> str:
    s, m = r["settings"], r["machine"]
    runs = len(s["tests"]) * (len(s["configs"]) + (1 if s["control"] and "control" not in s["configs"] else 0)) * s["seeds"]
    return (f"Preset `{s['preset']}` on {m['device']}: {runs} training runs ({s['seeds']} training seed(s) per "
            f"configuration), {s['sample']} unlearning request(s) served per fold and SISA run, "
            f"{secs(r['seconds_total'])} in all ({r['seconds_total'] / 60:.1f} min).")


def settings_table(r: dict) -> str:
    s = r["settings"]
    rows = [["preset", s["preset"]], ["image size", f"{s['image_size']} px"], ["model", s["model"]],
            ["initial weights", s["weights"]], ["recipe", s["recipe"]],
            ["epochs per stage", f"{s['epochs']} (`--slice_epochs {s['slice_epochs']}`)"],
            ["folds", f"{s['folds_run']} of {s['folds']} (the first of a {s['folds']}-fold split, trained and tested)"
             if s.get("folds_run") else str(s["folds"])], ["test sets", ", ".join(s["tests"])],
            ["SISA", f"{s['num_shards']} shards x {s['num_slices']} slices"],
            ["replicates (own folds, flags, partitions, weights)", str(s["replicates"])] if "replicates" in s else
            ["training seeds per configuration", str(s["seeds"])],
            ["unlearning requests served per fold", str(s["sample"])],
            ["positive control", f"uniform SISA with every {s['control_race']} training face given a random "
                                 "age class" if s["control"] else "off"],
            ["bootstrap resamples", str(s["n_boot"])], ["faces", "all" if s["limit"] is None else f"{s['limit']:,}"]]
    return table(["setting", "value"], rows)


def machine_table(r: dict) -> str:
    m, v = r["machine"], r["machine"]["versions"]
    lines = [table(["", ""], [["device", m["device"]], ["CPUs / torch threads", f"{m['cpus']} / {m['torch_threads']}"],
                              ["versions", f"python {v['python']}, torch {v['torch']}, torchvision {v['torchvision']}, "
                                           f"numpy {v['numpy']}, pandas {v['pandas']}"],
                              ["git commit", v["git_commit"]], ["total", secs(r["seconds_total"])]]), ""]
    rows = [[run, *(secs(ph.get(k)) for k in ("train", "evaluate", "unlearning", "evaluate after unlearning"))]
            for run, ph in r["timings"].items()]
    lines.append(table(["run", "training", "evaluation", "unlearning (served, verified)", "evaluation after"], rows))
    return "\n".join(lines)


def answer(t: dict, h: str) -> list[str]:
    cs = family(t, "placement vs uniform")
    if not cs:
        return []
    worst = cs[0].worst
    rows = [primary_row(config_title(run), cs, run) for run in runs(cs)]
    by = family(t, "placement vs uniform, by group")
    group_rows = [group_row(config_title(run), by, run) for run in runs(by)]
    gap = find(by, by[0].run, "gap (best - worst)") if by else None
    best_gap = f"{gap.best} - {gap.worst}" if gap else ""
    return [f"{h}## The answer: placement versus uniform SISA", "",
            f"Change in points (placement − uniform), paired on the same test faces, 95% intervals over test faces and "
            f"training seeds. The worst race is uniform's ({worst}); the gap is the mean accuracy of the other four races "
            f"minus the worst race's (every race's faces count, so it is not at the mercy of the smallest group). "
            f"Verdicts: Holm-adjusted over these {len(cs)} tests; *inconclusive* means the test cannot tell, and gives "
            "the change it would have detected (80% power).", "",
            table(["placement", "change of the gap", "verdict", "change of the worst race", "verdict"], rows), "",
            f"By group, and the gap between uniform's best and worst races ({best_gap}): change in points [95% CI], "
            "Holm-adjusted over the table:", "",
            table(["placement", *GROUPS, f"gap ({best_gap})"], group_rows), ""]


def primary_row(title: str, cs: list[Contrast], run: str) -> list[str]:
    """A primary family's row: the change of the gap and of the worst race, each with its verdict."""
    g, w = find(cs, run, "gap (others - worst)"), find(cs, run, "worst race")
    return [title, change(g), g.verdict, change(w), w.verdict]


def group_row(title: str, by: list[Contrast], run: str) -> list[str]:
    """A by-group family's row: each group, then the gap between the reference's best and worst races."""
    return [title, *(cell(find(by, run, "top1", g)) for g in GROUPS), cell(find(by, run, "gap (best - worst)"))]


SHORT_VERDICT = {"none": "no verdict"}    # a cell says the outcome only: no detectable change, no reason


def cell(c: Contrast | None) -> str:
    if c is None:
        return "–"
    return f"{change(c)} {SHORT_VERDICT.get(c.outcome, c.outcome)}"


def control(t: dict, h: str, race: str) -> list[str]:
    out = []
    cs = family(t, "control vs uniform")
    if cs:
        ok = find(cs, "control", "gap (others - worst)").outcome == "widened"
        by = family(t, "control vs uniform, by group")
        out += [f"{h}## Positive control: the {race} training faces mislabelled", "",
                f"Uniform SISA, except that every {race} training face carries a random age class (test labels untouched): "
                "a configuration built to widen the gap, run through the same study.", "",
                table(["", "change of the gap", "verdict", "change of the worst race", "verdict"],
                      [primary_row("control − uniform", cs, "control")]), "",
                table(["", *GROUPS, "gap (best − worst)"], [group_row("control − uniform", by, "control")]), "",
                ("The study detects a change of fairness built into the training: the control's gap comes out widened, "
                 "so the pipeline is not blind to amplification." if ok else
                 "**The control did not come out widened**: at these settings the pipeline cannot show amplification "
                 "even where it was built in; read the placement verdicts above as uninformative."), ""]
    cs = family(t, "segregated vs uniform")
    if cs:
        by = family(t, "segregated vs uniform, by group")
        out += [f"{h}## The extreme placement: the {race} faces in as few shards as possible", "",
                "How much can placement alone do? One race's training faces fill one shard (and no other shard has "
                "any): the most any placement can change the race shares of the shards.", "",
                table(["", "change of the gap", "verdict", "change of the worst race", "verdict"],
                      [primary_row("segregated − uniform", cs, "segregated")]), "",
                table(["", *GROUPS, "gap (best − worst)"], [group_row("segregated − uniform", by, "segregated")]),
                ""]
    return out


def accuracy(r: dict, t: dict, h: str) -> list[str]:
    tags = list(t["levels"])
    poster = r["poster"]["top1"]
    seeds = r["settings"]["seeds"]
    rows = []
    for g in GROUPS:
        row = [g]
        for tag in tags:
            v = level(t["levels"][tag], "top1", g)
            txt = f"{pct(v['value'])} {interval(v['ci_low'], v['ci_high'])}"
            if tag in poster.get(g, {}):
                txt += f" ({poster[g][tag]})"
            row.append(txt)
        rows.append(row)
    for stat in ("gap (best - worst)", "worst race top1", "ratio (worst / best)"):
        rows.append([stat, *(f"{pct(v['value'])} {interval(v['ci_low'], v['ci_high'])}"
                             for v in (level(t["levels"][x], stat) for x in tags))])
    if seeds > 1:
        rows.append(["between-seed SD of the gap", *(pct(level(t["levels"][x], "gap (best - worst)")["seed_sd"]) for x in tags)])
    return [f"{h}## Accuracy by group", "",
            "Top-1 in % (the mean of the age classes' accuracies, as the original), mean over folds"
            + (" and training seeds" if seeds > 1 else "") + "; 95% intervals over test faces"
            + (" and seeds" if seeds > 1 else "") + " (percentile; basic intervals for gap, worst race and ratio, which "
            "are order statistics). In parentheses: the poster (ImageNet weights, 200 px, 63 test faces per race).", "",
            table(["group", *(config_title(x) for x in tags)], rows), ""]


def versus_baseline(t: dict, h: str) -> list[str]:
    cs = family(t, "vs baseline")
    rows = [primary_row(config_title(run), cs, run) for run in runs(cs)]
    worst = cs[0].worst if cs else ""
    return [f"{h}## SISA versus the monolithic baseline", "",
            f"Change in points (configuration − baseline); the worst race is the baseline's ({worst}), the gap the mean of "
            f"the other races minus it. Holm over {len(cs)} tests.", "",
            table(["configuration", "change of the gap", "verdict", "change of the worst race", "verdict"], rows), ""]


def after(t: dict, h: str) -> list[str]:
    cs = family(t, "after vs before unlearning")
    if not cs:
        return []
    rows = []
    for tag in runs(cs):                          # each run after its requests, against itself before
        before, later = (level(t[key][tag], "gap (best - worst)")["value"] for key in ("levels", "levels_after"))
        title, *cells = primary_row(config_title(tag), cs, tag)
        rows.append([title, f"{pct(before)} → {pct(later)}", *cells])
    return [f"{h}## Fairness after the served requests", "",
            "The same test faces before and after each SISA run served its requests (paired); the worst race is the "
            f"run's own before unlearning, the gap the mean of the other races minus it. Holm over {len(cs)} tests.", "",
            table(["configuration", "gap (best − worst) before → after", "change of the gap (others − worst)", "verdict",
                   "change of the worst race", "verdict"], rows), ""]


def aggregations(t: dict, h: str) -> list[str]:
    rows = []
    for tag, a in t["aggregations"].items():
        for model, v in a.items():
            rows.append([config_title(tag), model, *(pct(v.get(g)) for g in GROUPS)])
    return [f"{h}## Ensemble versus single shards, and the three aggregations", "",
            "Top-1 in % before unlearning (mean over seeds): the ensemble under each aggregation, and the shard models "
            "alone (their mean, lowest and highest).", "",
            table(["configuration", "model", *GROUPS], rows), ""]


def costs(t: dict, s: dict, h: str) -> list[str]:
    rows = []
    for tag, u in t["unlearning"].items():
        e, ei, es = u["expected"]["shared"], u["expected"]["independent"], u["expected_sisa_schedule"]["shared"]
        b = u["batches"]["shared"]
        batch_cells = [f"{b[k]['shards_retrained']:.2f}, {pct(b[k]['batch_share_of_full'])}%" if k in b else "–"
                       for k in ("5", "20")]
        sv = u["served"]
        served = (f"{sv['requests']}: {pct(sv['share_of_full'])}%, {secs(sv['wall_seconds_per_request'])}"
                  + (" (verified)" if sv["verified"] else "")) if sv["requests"] else "none (`--sample 0`)"
        rows.append([config_title(tag), f"{e['speedup_vs_baseline']:.2f}x", f"{pct(e['expected_share_of_full'])}%",
                     f"{es['speedup_vs_baseline']:.2f}x / {pct(es['expected_share_of_full'])}%",
                     f"{ei['speedup_vs_baseline']:.2f}x / {pct(ei['expected_share_of_full'])}%", *batch_cells, served])
    return [f"{h}## Unlearning cost per strategy", "",
            "Expected retraining per request from the likelihood model (no training), first as a speed-up over "
            f"retraining the 1x1 baseline, then as a share of retraining all shards with this study's schedule "
            f"(`--slice_epochs {s['slice_epochs']}`) and with the SISA paper's (`sisa`). Request models: *shared* (one "
            "latent 'knows the law' draw drives both the high-likelihood flag and the request, as in the original's "
            "model) and *independent* (requests proportional to k, independent of the flag): under the independent "
            "model the placements' advantage is what the flag alone cannot predict. Batches: requests gathered and "
            "served together (shards retrained per batch, batch cost as % of all shards). Served: requests drawn by "
            "likelihood, retrained, committed and verified; measured share of all shards and wall seconds per request.", "",
            table(["placement", "speed-up vs 1x1 (shared)", "% of all shards (shared)", "SISA schedule: vs 1x1 / % (shared)",
                   "independent: vs 1x1 / %", "batches of 5", "batches of 20", "served"], rows), ""]


def composition(r: dict, t: dict, h: str) -> list[str]:
    poster = r["poster"]["composition"]
    rows = [[label, *(f"{pct(row[race])} ({poster[label][i]})" for i, race in enumerate(RACES)), pct(row["share"])]
            for label, row in t["composition"].items()]
    return [f"{h}## Slice composition", "",
            "Race shares (%) of the high- and low-likelihood training faces, pooled over folds (poster in parentheses):", "",
            table(["training faces", *RACES, "share of faces"], rows), ""]


def collapsed(t: dict, h: str) -> list[str]:
    if not t["collapsed"]:
        return []
    classes = sorted({c["age_class"] for c in t["collapsed"]}, key=AGE_CLASSES.index)
    rows = [[config_title(tag), g, *(pct(t["per_class"][tag][g][c]) for c in AGE_CLASSES)]
            for tag in t["per_class"] for g in GROUPS if any(t["per_class"][tag][g][c] is not None and
                                                             t["per_class"][tag][g][c] < 0.10 for c in classes)]
    return [f"{h}## Age classes that collapse", "",
            f"Top-1 in % per age class, for the groups where a class scores below 10% ({', '.join(classes)}): a group's "
            "top-1 averages its classes, so a collapsed class pulls it down whatever the others do.", "",
            table(["configuration", "group", *AGE_CLASSES], rows), ""]


def method(r: dict, h: str) -> list[str]:
    return [f"{h}# How to read this", "",
            "- Intervals resample test faces within their race × age-class cells (per fold), with the same resamples "
            "for every run, so comparisons are paired; with several training seeds they also resample each "
            "configuration's seeds, so training noise is in them.",
            "- Changes are of linear statistics, race identities fixed from the reference's estimate: the reference's "
            "worst race, the gap between the mean of the other races and it (primary), each group, and the gap between "
            "the reference's best and worst races (secondary: a small best race makes it noisy). The best-minus-worst "
            "gap itself is an order statistic, biased under resampling; its level is shown with a basic bootstrap "
            "interval only.",
            "- Multiplicity: each table is one family, Holm-adjusted. The primary family is the gap and worst-race "
            "changes of the placements versus uniform; per-group changes are secondary.",
            "- *Inconclusive (detectable ±x)*: not significant; x is the change the test would have detected with 80% "
            "power at the family's level. Inconclusive is not *equal*.",
            "- Numbers come from the runs' files (report.json); `predictions/` holds every run's per-face predictions "
            "and ensemble logits to recompute any contrast.", ""]


# ---- figures and predictions -----------------------------------------------------------------------
def figures(layout: StudyLayout, data: dict, summaries_dir: Path) -> dict:
    out = {}
    for test, t in data["tests"].items():
        figs = {}
        top1 = {config_title(tag): pd.Series({g: level(lv, "top1", g)["value"] for g in GROUPS}) for tag, lv in t["levels"].items()}
        decrease = {config_title(tag): pd.Series({r: level(lv, "decrease vs best", r)["value"] for r in RACES})
                    for tag, lv in t["levels"].items()}
        name = f"{test}-accuracy"
        plots.bar_chart(top1, decrease, layout.figure(name),
                        title="Top-1 per group; grey: each race's decrease versus the best race")
        figs["accuracy by group"] = layout.figure(name).name
        name = f"{test}-contrasts"
        plots.contrast_chart(chart_rows(t), layout.figure(name))
        figs["changes with 95% intervals"] = layout.figure(name).name
        for tag in ("baseline", "later-slices", "control"):
            if tag in t["per_class"]:
                square = np.array([[t["per_class"][tag][g][c] if t["per_class"][tag][g][c] is not None else np.nan
                                    for c in AGE_CLASSES] for g in ORIGINAL_GROUPS])      # the heatmap's rows
                name = f"{test}-{tag}-heatmap"
                plots.heatmap(square, config_title(tag), layout.figure(name))
                figs[f"{config_title(tag)}: race x age class"] = layout.figure(name).name
        shares = pd.DataFrame(t["composition"]).T
        name = f"{test}-composition"
        plots.composition_chart(shares, layout.figure(name), "race shares of the high- and low-likelihood training faces")
        figs["slice composition"] = layout.figure(name).name
        out[test] = figs
    return out


def chart_rows(t: dict) -> dict[str, list[dict]]:
    """The contrasts as plots.contrast_chart labels them: a run after unlearning as '<tag> after', each
    statistic by its table name."""
    return {name: [{**c.to_dict(), "run": c.run + (" after" if c.phase == "after" else ""), "statistic": c.label}
                   for c in family(t, name)] for name in t["contrasts"]}


def save_predictions(layout: StudyLayout, data: dict, summaries_dir: Path) -> dict:
    """Per test kind, the test faces once (gzipped CSV) and, per run, a small .npz aligned with them:
    the ensemble's top-2 and every shard model's top-1, and for the runs before unlearning the
    ensemble's summed logits (float16; a run after unlearning differs from its run before only in the
    retrained shards, and its predictions are enough for every contrast the report makes)."""
    from .stats import test_faces
    saved = {}
    for test, t in data["tests"].items():
        names = [n for runs in t["runs"].values() for key in ("before", "after") for n in (runs[key] or [])]
        before = {n for runs in t["runs"].values() for n in runs["before"]}
        faces = None
        for n in names:
            summary = SummaryLayout(Path(summaries_dir), n)
            pred = pd.read_csv(summary.predictions)
            if faces is None:
                faces = test_faces(pred)
                write_bytes(layout.faces_file(test), gzip.compress(faces.to_csv(index=False).encode(), mtime=0))
            with np.load(summary.logits) as z:
                key = pd.MultiIndex.from_arrays([z["fold"], z["filename"].astype(str)])
                order = key.get_indexer(pd.MultiIndex.from_arrays([faces["fold"], faces["filename"]]))
                if (order < 0).any():         # get_indexer's -1 would silently take the last face's logits
                    missing = faces[order < 0].iloc[0]
                    raise SisaError(f"{summary.logits} lacks {int((order < 0).sum())} of the study's {len(faces)} {test} "
                                    f"test faces (e.g. fold {missing['fold']}, {missing['filename']}): summary {n} was not "
                                    "made by this study's evaluation; evaluate its run again with evaluate.py --overwrite")
                shard_logits = z["shard_logits"][:, order]
            ens = pred[pred["model"] == "ensemble"].sort_values(["fold", "filename"])
            shards = [pred[pred["model"] == f"shard-{s}"].sort_values(["fold", "filename"])["pred1"].to_numpy()
                      for s in range(shard_logits.shape[0])]
            buf = io.BytesIO()
            arrays = {"pred1": ens["pred1"].to_numpy(np.uint8), "pred2": ens["pred2"].to_numpy(np.uint8),
                      "shard_pred1": np.stack(shards).astype(np.uint8)}
            if n in before:
                arrays["ensemble_logits"] = shard_logits.sum(0).astype(np.float16)
            np.savez_compressed(buf, **arrays)
            write_bytes(layout.predictions_file(n), buf.getvalue())
            saved[n] = layout.predictions_file(n).relative_to(layout.root).as_posix()
    return saved
