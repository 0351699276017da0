"""A study's numbers: everything its report shows, computed from the runs' files into one dict.

Inputs are what the study's commands wrote: the summaries' per-face predictions (before and after
unlearning), the runs' saved logits, partitions, unlearning logs and checkpoint records. Nothing is
retrained. The dict is report.json; report.md is rendered from it alone (report.py).
"""
from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pandas as pd

from . import scenarios
from .data import AGE_CLASSES, RACES
from .evaluation import composition_shares, summary_name
from .experiment import Options, open_run, versions
from .layout import RunLayout, SummaryLayout
from .store import read_jsonl

POSTER = {  # top-1 % on the poster (mean of 5 runs, ImageNet weights, 200 px, balanced test of 63 faces per race)
    "random": {"baseline": 66.3, "uniform": 61.6, "few-shards": 61.9, "later-slices": 60.0},
    "white": {"baseline": 75.9, "uniform": 71.4, "few-shards": 71.1, "later-slices": 68.9},
    "black": {"baseline": 64.4, "uniform": 56.8, "few-shards": 59.7, "later-slices": 59.4},
    "asian": {"baseline": 64.4, "uniform": 62.5, "few-shards": 62.2, "later-slices": 61.6},
    "indian": {"baseline": 72.1, "uniform": 59.7, "few-shards": 61.3, "later-slices": 59.4},
    "other": {"baseline": 71.7, "uniform": 60.3, "few-shards": 59.4, "later-slices": 57.5},
}
POSTER_COMPOSITION = {"high unlearning likelihood": [42.9, 16.9, 15.1, 18.1, 7.0],
                      "low unlearning likelihood": [42.4, 19.8, 14.3, 16.3, 7.2]}
PLACEMENTS = ("few-shards", "later-slices")
BATCHES = (5, 20)


def _records(table: pd.DataFrame) -> dict:
    return {k: {c: _num(v) for c, v in row.items()} for k, row in table.to_dict(orient="index").items()}


def _num(v):
    if isinstance(v, (float, np.floating)):
        return None if not np.isfinite(v) else float(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    return v


class RunSet:
    """The runs of one configuration (one per training seed) for one test kind."""

    def __init__(self, tag: str, names: list[str], checkpoints_dir: Path, summaries_dir: Path, progress: dict):
        self.tag, self.names = tag, names
        self.layouts = [RunLayout((Path(checkpoints_dir) / n).resolve()) for n in names]
        self.exps = [open_run(layout, Options(), with_images=False) for layout in self.layouts]
        self.cfg = self.exps[0].cfg
        self.sisa = self.cfg.num_shards * self.cfg.num_slices > 1
        self.summaries_dir = Path(summaries_dir)
        self.progress = [progress.get(n, {}) for n in names]
        self._all_progress = progress
        # the summaries by their names (the run's, and <run>-unlearned<N> once it served requests)
        self.before_names = list(names)
        self.before = [self._pred(summaries_dir, b) for b in self.before_names]
        served = all(any(p["forgotten"].any() for p in e.partitions) and
                     SummaryLayout(self.summaries_dir, summary_name(e)).predictions.exists() for e in self.exps)
        self.after_names = [summary_name(e) for e in self.exps] if served else None
        self.after = [self._pred(summaries_dir, a) for a in self.after_names] if served else None

    def progress_of(self, run: str) -> dict:
        """The progress record of a run of this set's study (a scenario's clone, say)."""
        return self._all_progress.get(run, {})

    @staticmethod
    def _pred(summaries_dir: Path, name: str) -> pd.DataFrame:
        return pd.read_csv(SummaryLayout(Path(summaries_dir), name).predictions)


def analyse(settings, checkpoints_dir: Path, summaries_dir: Path, progress: dict, device: str) -> dict:
    """The whole report as plain data (see report.py for how it is shown): format 2, the study of
    replicates (study/numbers.py)."""
    out = {"format": 2, "study": settings.name, "settings": settings.to_dict(), "machine": machine(device),
           "timings": timings(progress), "poster": {"top1": POSTER, "composition": POSTER_COMPOSITION}, "tests": {}}
    for test in settings.tests:
        sets = {tag: RunSet(tag, [settings.run_name(test, tag, r) for r in range(settings.replicates)], checkpoints_dir,
                            summaries_dir, progress) for tag in settings.all_configs}
        out["tests"][test] = analyse_replicates(test, sets, settings)
    return out


SECONDARY = ("accuracy_overall", "group_min_accuracy", "gap_accuracy", "gap_accuracy_within_one", "accuracy_standardised")


def add_family(fams: dict, name: str, pairs: list, values: dict, broken: dict, secondary: tuple,
               reference: str) -> None:
    """The primary gap decided as one family and the secondary statistics as another, so a secondary
    statistic never widens the primary's Bonferroni level (nothing without pairs)."""
    from .study import numbers as N
    if pairs:
        fams[name] = N.compare(name, pairs, values, broken, (N.PRIMARY,), reference)
        fams[f"{name}, secondary"] = N.compare(f"{name}, secondary", pairs, values, broken, secondary, reference)


def analyse_replicates(test: str, sets: dict[str, RunSet], s) -> dict:
    """One test kind of a study of replicates: levels, the comparison families, the A/A calibration,
    the control's dose response, what the placements change, costs; every number paired within a
    replicate and replicated across them."""
    from .study import numbers as N
    ref = s.reference
    faces = N.StudyFaces([p for rs in sets.values() for p in rs.before + (rs.after or [])], s.n_boot, s.seed, test)
    values, broken = {}, {}
    for tag, rs in sets.items():
        for phase, preds in (("before", rs.before), ("after", rs.after)):
            if preds is None:
                continue
            values[(tag, phase)] = N.stack([faces.measures(p, ref) for p in preds])
            why = next((w for w in map(N.degenerate_run, preds) if w), None)
            if why:
                broken[(tag, phase)] = why
    fams: dict[str, list] = {}

    def family(name: str, pairs: list, secondary: tuple = SECONDARY) -> None:
        add_family(fams, name, pairs, values, broken, secondary, ref)
    if "uniform" in sets:
        family("placement vs uniform", [(t, "before", "uniform", "before") for t in PLACEMENTS + ("segregated",)
                                        if t in sets])
        family("A/A: uniform-b vs uniform", [("uniform-b", "before", "uniform", "before")] if "uniform-b" in sets else [])
        family("control vs uniform", [(t, "before", "uniform", "before") for t in s.controls if t in sets],
               ("accuracy_standardised", "accuracy_overall"))
    family("vs baseline", [(t, "before", "baseline", "before") for t in sets if t != "baseline"])
    family("after vs before unlearning", [(t, "after", t, "before") for t in sets if (t, "after") in values],
           ("accuracy_overall", "accuracy_standardised"))
    scen = forgetting(test, sets, s, faces, values, broken, fams)
    per_race = faces.table["race"].value_counts()
    return {"forgetting": scen,"faces": {"tested": len(faces.table), "per_race": {r: int(per_race.get(i, 0)) for i, r in enumerate(RACES)},
                      "folds": sets["baseline"].cfg.folds, "replicates": s.replicates,
                      "standard_age_shares": dict(zip(AGE_CLASSES, map(float, faces.shares)))},
            "reference_race": ref,
            "degenerate": [{"config": t, "phase": ph, "why": why} for (t, ph), why in broken.items()],
            "levels": {f"{t} {ph}": N.levels(v) for (t, ph), v in values.items()},
            "comparisons": {k: [c.to_dict() for c in v] for k, v in fams.items()},
            "aa": N.aa_false_positives(values, broken, s.replicates),
            "dose_response": N.dose_response(fams.get("control vs uniform", []), s.controls),
            "placement": N.placement_shares({t: rs.exps for t, rs in sets.items() if rs.sisa}, ref),
            "aggregations": {tag: aggregations(rs, rs.summaries_dir) for tag, rs in sets.items() if rs.sisa},
            "unlearning": {tag: unlearning(rs) for tag, rs in sets.items() if rs.sisa},
            "composition": _records(composition_shares(sets.get("later-slices", sets["baseline"]).exps[0].partitions)),
            "runs": {tag: {"before": rs.names, "after": rs.after_names} for tag, rs in sets.items()}}


def forgetting(test: str, sets: dict[str, RunSet], s, faces, values: dict, broken: dict, fams: dict) -> dict | None:
    """Scenarios at a volume (scenarios.py): every configuration serving them, after each volume, as
    phases "<scenario> <volume>" of `values` (added here), with four comparison families added to
    `fams` (the primary gap and accuracy): after minus before; a group scenario minus random at the
    same volume (who asks, separated from how many); a placement minus uniform under the same requests;
    SISA minus the monolith retrained from scratch without the faces. Returns the steps' costs."""
    from .study import numbers as N
    if not s.scenarios:
        return None
    tags = [t for t in s.scenario_configs if t in sets]
    vols = sorted(s.forget)
    costs, names = [], {}
    for tag in tags:
        rs = sets[tag]
        for sc in s.scenarios:
            clones = [s.scenario_run(test, tag, r, sc) for r in range(s.replicates)]
            for v in vols:
                phase = f"{sc} {v:g}"
                names.setdefault(tag, {})[phase] = [s.volume_summary(c, v) for c in clones]
                preds = [RunSet._pred(rs.summaries_dir, n) for n in names[tag][phase]]
                values[(tag, phase)] = N.stack([faces.measures(p, s.reference) for p in preds])
                why = next((w for w in map(N.degenerate_run, preds) if w), None)
                if why:
                    broken[(tag, phase)] = why
                steps = [rs.progress_of(c).get(f"forget {v:g}", {}) for c in clones]
                costs.append({"config": tag, "scenario": sc, "volume": v, "replicates": len(steps),
                              **{k: _num(float(np.mean([st.get(k, np.nan) for st in steps])))
                                 for k in ("faces_served", "shard_models_retrained", "faces_x_epochs", "baseline_faces_x_epochs",
                                           "full_faces_x_epochs", "serve_seconds", "evaluate_seconds", "seconds")}})
    by_key = {(c["config"], c["scenario"], c["volume"]): c for c in costs}
    for c in costs:        # against retraining the monolith on the same requests (the baseline's clone)
        base = by_key.get(("baseline", c["scenario"], c["volume"]), {})
        c["speedup_vs_retrained_monolith"] = _num(base.get("faces_x_epochs", np.nan) / c["faces_x_epochs"]) \
            if c["faces_x_epochs"] else None
        c["seconds_speedup_vs_retrained_monolith"] = _num(base.get("serve_seconds", np.nan) / c["serve_seconds"]) \
            if c["serve_seconds"] else None

    def family(name: str, pairs: list, secondary: tuple = ("accuracy_overall",)) -> None:
        add_family(fams, name, pairs, values, broken, secondary, s.reference)
    phases = [f"{sc} {v:g}" for sc in s.scenarios for v in vols]
    family("forgetting: after vs before", [(t, ph, t, "before") for t in tags for ph in phases])
    groups = [sc for sc in s.scenarios if sc.startswith("group:")]
    if "random" in s.scenarios:    # a group's own race's accuracy says why its requests do (or do not) widen the gap
        family("forgetting: group vs random", [(t, f"{g} {v:g}", t, f"random {v:g}", scenarios.parse(g).race)
                                               for t in tags for g in groups for v in vols],
               ("accuracy_overall", "accuracy_standardised"))
        if groups and len(tags) > 1:
            # who asks is a question about requests, not placement: the mean over configurations of each
            # replicate's measures (the same faces and resamples) averages every configuration's own
            # retraining noise, a sharper answer than any one configuration gives
            for ph in (f"{sc} {v:g}" for sc in ("random", *groups) for v in vols):
                why = next((broken[(t, ph)] for t in tags if (t, ph) in broken), None)
                if why:
                    broken[(POOLED, ph)] = why
                values[(POOLED, ph)] = {m: np.mean([values[(t, ph)][m] for t in tags], axis=0)
                                        for m in values[(tags[0], ph)]}
            # the largest volume is the question named in advance (where a group's requests should widen
            # the gap, if anywhere): its own family, so the smaller volumes' dose response never widens its level
            for fam, vs in ((POOLED_TOP, vols[-1:]), (POOLED_SMALLER, vols[:-1])):
                family(fam, [(POOLED, f"{g} {v:g}", POOLED, f"random {v:g}", scenarios.parse(g).race)
                             for g in groups for v in vs], ("accuracy_overall", "accuracy_standardised"))
    if "uniform" in tags:
        family("forgetting: placement vs uniform", [(t, ph, "uniform", ph) for t in tags
                                                    if t not in ("baseline", "uniform") for ph in phases])
    if "baseline" in tags:
        family("forgetting: SISA vs retrained monolith", [(t, ph, "baseline", ph) for t in tags if t != "baseline"
                                                          for ph in phases])
    if s.methods and "baseline" in tags:
        rs = sets["baseline"]
        for sc in s.scenarios:
            for v in vols:
                for m in s.methods:
                    phase = f"{m} {sc} {v:g}"
                    names.setdefault("baseline", {})[phase] = [s.method_summary(test, r, sc, m, v)
                                                               for r in range(s.replicates)]
                    preds = [RunSet._pred(rs.summaries_dir, n) for n in names["baseline"][phase]]
                    values[("baseline", phase)] = N.stack([faces.measures(p, s.reference) for p in preds])
                    why = next((w for w in map(N.degenerate_run, preds) if w), None)
                    if why:
                        broken[("baseline", phase)] = why
        family("approximate vs retrained", [("baseline", f"{m} {sc} {v:g}", "baseline", f"{sc} {v:g}")
                                            for m in s.methods for sc in s.scenarios for v in vols])
    return {"scenarios": list(s.scenarios), "volumes": vols, "configs": tags, "costs": costs, "runs": names,
            "groups": group_shares(sets["baseline" if "baseline" in tags else tags[0]], groups, vols),
            "methods": list(s.methods), "membership": membership(test, sets, s) if s.methods and "baseline" in tags
            else None}


POOLED = "all configurations"    # the mean over the configurations serving the scenarios (forgetting)
POOLED_TOP = "forgetting: group vs random, all configurations"                         # the largest volume
POOLED_SMALLER = "forgetting: group vs random, all configurations, smaller volumes"


def group_shares(rs: RunSet, groups: list[str], vols: list[float]) -> dict:
    """For each group scenario: its training faces per fold and, at each volume, the share of them its
    requests take (mean over replicates and folds): 10% of all training faces can be half of one race's."""
    out = {}
    for g in groups:
        sc = scenarios.parse(g)
        parts = [p for e in rs.exps for p in e.partitions]
        eligible = [int(sc.eligible(scenarios.training_faces(p)).sum()) for p in parts]
        out[g] = {"training_faces": float(np.mean(eligible)),
                  "share_by_volume": {f"{v:g}": float(np.mean([scenarios.count(p, v) / n for p, n in zip(parts, eligible)
                                                              if n])) for v in vols}}
    return out


def membership(test: str, sets: dict[str, RunSet], s, retain_sample: int = 5000, n_boot: int = 200) -> dict:
    """For every scenario and volume: the original baseline, its exact retraining without the faces, and
    each approximate method — accuracy on the forget, retained and test faces and the membership attack
    (mia.py) on forget vs test faces, overall and by race, pooled over folds and replicates; each
    method's gap to retraining, and its cost."""
    from . import mia, scenarios
    rs = sets["baseline"]
    summaries = rs.summaries_dir
    out = {}
    for sc in s.scenarios:
        for v in sorted(s.forget):
            models = {"original": [rs.names[r] for r in range(s.replicates)],
                      "retrained": [s.volume_summary(s.scenario_run(test, "baseline", r, sc), v) for r in range(s.replicates)],
                      **{m: [s.method_summary(test, r, sc, m, v) for r in range(s.replicates)] for m in s.methods}}
            parts = {}
            for model, summaries_of in models.items():
                sides = {"retain": [], "forget": [], "test": []}
                for r, name in enumerate(summaries_of):
                    exp = rs.exps[r]
                    with np.load(SummaryLayout(summaries, name).features) as z:
                        table = {k: z[k] for k in z.files}
                    for f, part in enumerate(exp.partitions):
                        here = table["fold"] == f
                        rows = table["row"][here]
                        gone = part["filename"].isin(scenarios.forget_set(part, scenarios.parse(sc), v, exp.cfg.seed, f))
                        role = part["role"].to_numpy()[rows]
                        mask = {"forget": gone.to_numpy()[rows], "test": role == "test"}
                        mask["retain"] = (role == "train") & ~mask["forget"]
                        for side, m_ in mask.items():
                            sides[side].append(pd.DataFrame({
                                "loss": table["loss"][here][m_], "confidence": table["confidence"][here][m_],
                                "right": table["pred"][here][m_] == part["age_class"].to_numpy()[rows][m_],
                                "race": part["race"].to_numpy()[rows][m_]}))
                d = {k: pd.concat(x, ignore_index=True) for k, x in sides.items()}
                keep = rng_sample(len(d["retain"]), retain_sample, s.seed)
                d["retain"] = d["retain"].iloc[keep]
                X = {k: x[["loss", "confidence"]].to_numpy(float) for k, x in d.items()}
                attack = mia.forgetting(X["retain"], X["forget"], X["test"], d["forget"]["race"].to_numpy(int),
                                        d["test"]["race"].to_numpy(int), n_boot=n_boot, seed=s.seed)
                acc = {side: {"all": float(x["right"].mean()),
                              **{race: float(x.loc[x["race"] == i, "right"].mean()) if (x["race"] == i).any() else None
                                 for i, race in enumerate(RACES)}} for side, x in d.items()}
                facts = [rs.progress_of(n).get("approximate", {}) for n in summaries_of] if model in s.methods else []
                parts[model] = {"attack": attack, "accuracy": acc,
                                "diverged": any(f_.get("diverged") for f_ in facts),
                                "image_steps": float(np.mean([f_.get("image_steps", np.nan) for f_ in facts])) if facts else None,
                                "seconds": float(np.mean([f_.get("seconds", np.nan) for f_ in facts])) if facts else None,
                                "settings": {k: facts[0].get(k) for k in ("lr", "budget", "alpha", "temperature",
                                                                          "batch_size")} if facts else None,
                                # chosen per replicate on its own training faces (tuning.py)
                                "learning_rates": sorted({f_.get("lr") for f_ in facts if f_.get("lr") is not None})}
            steps = [rs.progress_of(n).get(f"forget {v:g}", {}) for n in
                     (s.scenario_run(test, "baseline", r, sc) for r in range(s.replicates))]
            parts["retrained"]["image_steps"] = float(np.mean([st.get("faces_x_epochs", np.nan) for st in steps]))
            parts["retrained"]["seconds"] = float(np.mean([st.get("serve_seconds", np.nan) for st in steps]))
            ref = parts["retrained"]
            for model, p in parts.items():        # the anchors' average gap to retraining
                gaps = [abs(p["accuracy"][side]["all"] - ref["accuracy"][side]["all"]) for side in ("forget", "retain", "test")]
                gaps.append(abs(p["attack"]["logistic"]["auc_forget"] - ref["attack"]["logistic"]["auc_forget"]))
                p["average_gap_to_retrained"] = float(np.mean(gaps))
                p["auc_gap_to_retrained_by_race"] = {
                    race: _num(p["attack"]["logistic"]["by_race"].get(race, {}).get("auc_forget", np.nan)
                               - ref["attack"]["logistic"]["by_race"].get(race, {}).get("auc_forget", np.nan))
                    for race in RACES}
            out[f"{sc} {v:g}"] = {"models": parts, "too_weak": mia.verdict(parts["original"]["attack"])}
    return _clean(out)


def _clean(x):
    """Plain JSON: tuples as lists, numpy numbers as Python's, non-finite numbers as None."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return _num(x) if isinstance(x, (float, np.floating, np.integer)) else x


def rng_sample(n: int, k: int, seed: int) -> np.ndarray:
    """k of n rows, drawn once from the seed (all of them when k >= n)."""
    from .seeding import rng
    return np.arange(n) if k >= n else np.sort(rng(seed, "mia-retain", n).choice(n, k, replace=False))


def aggregations(rs: RunSet, summaries_dir: Path) -> dict:
    """Top-1 per group of the ensemble under each aggregation and of the single shard models (mean,
    lowest, highest), before unlearning, mean over seeds (from evaluate.py's -aggregations.csv)."""
    tables = [pd.read_csv(SummaryLayout(Path(summaries_dir), n).aggregations, index_col=0) for n in rs.before_names]
    mean = sum(tables) / len(tables)
    return {m: {g: _num(v) for g, v in row.items()} for m, row in mean.iterrows()}


def unlearning(rs: RunSet) -> dict:
    """Expected cost per request (both request models; the run's and the SISA paper's epoch schedule),
    batches, and the requests served (measured, verified)."""
    import dataclasses

    from .unlearning import expected_batch_cost, expected_cost
    cfg, parts = rs.cfg, rs.exps[0].partitions          # every seed has the same partitions
    sisa_cfg = dataclasses.replace(cfg, slice_epochs="sisa")
    out = {"slice_epochs": cfg.slice_epochs, "expected": {}, "expected_sisa_schedule": {}, "batches": {}}
    for model in ("shared", "independent"):
        out["expected"][model] = _mean_dicts([expected_cost(p, cfg, model) for p in parts])
        out["expected_sisa_schedule"][model] = _mean_dicts([expected_cost(p, sisa_cfg, model) for p in parts])
        out["batches"][model] = {str(k): _mean_dicts([expected_batch_cost(p, cfg, k, 1000, cfg.seed, f, model)
                                                      for f, p in enumerate(parts)]) for k in BATCHES
                                 if all(k <= int((p["role"] == "train").sum()) for p in parts)}
    log = [r for layout in rs.layouts for r in read_jsonl(layout.unlearning_log)]
    trained = [p.get("train", {}).get("seconds", np.nan) for p in rs.progress]   # the study's one source of time
    checked = [p.get("unlearning", {}) for p in rs.progress]
    out["served"] = {"requests": len(log),
                     "share_of_full": _num(np.mean([r["share_of_full"] for r in log])) if log else None,
                     "speedup_vs_baseline": _num(np.mean([r["speedup_vs_baseline"] for r in log])) if log else None,
                     "wall_seconds_per_request": _num(np.mean([r["wall_seconds"] for r in log])) if log else None,
                     "training_seconds_per_fold": _num(np.mean(trained) / cfg.n_folds),
                     # the check the study ran after serving (a study from before it was recorded: None)
                     "verified": all(c.get("verified") for c in checked) if all("verified" in c for c in checked)
                     else None}
    return out


def _mean_dicts(ds: list[dict]) -> dict:
    out = {}
    for k, v in ds[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = _num(float(np.mean([d[k] for d in ds])))
        elif k == "request_model":
            out[k] = v
    return out


def timings(progress: dict) -> dict:
    """Seconds of each run's phases, every attempt included (study/progress.py)."""
    from .study.progress import PHASES
    return {run: {phase: _num(float(v["seconds"])) for phase, v in phases.items() if phase in PHASES}
            for run, phases in progress.items()}


def machine(device: str) -> dict:
    import os

    import torch

    from .device import device_name, resolve_device
    return {"device": device_name(resolve_device(device)), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "versions": versions()}
