"""A study's numbers over replicates (the design of issue 23): every run's measures on the study's test
faces under one set of face resamples, levels and paired comparisons with intervals over replicates,
the A/A calibration, the control's dose response, and a tidy table of counts.

Work in progress: report.py does not render these yet (the study still reports analysis.py's numbers).

Inputs are predictions tables as evaluate.py writes them (`model`, `fold`, `filename`, `race`,
`age_class`, `pred1`): the ensemble's rows count. Replicates test different folds of the same faces
(the k-fold test) or different faces (the balanced test); a face tested twice in one run counts twice.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..data import AGE_CLASSES, RACES
from ..intervals import Comparison, change, decide, verdict
from ..measures import BY_RACE, accuracy, accuracy_standardised, cell_counts, degenerate, gap, pooled_age_shares
from ..seeding import rng

N_CLASSES = len(AGE_CLASSES)
PRIMARY = "gap_accuracy_standardised"
SCALARS = ("gap_accuracy_standardised", "gap_accuracy", "gap_accuracy_within_one", "group_min_accuracy",
           "accuracy_overall")


class StudyFaces:
    """Every face any run of a study tested, and B stratified resamples of them (race x age class),
    shared by every run, replicate and phase: row 0 counts each face once."""

    def __init__(self, preds: list[pd.DataFrame], n_boot: int, seed: int = 0, key: str = ""):
        ens = pd.concat([p.loc[p["model"] == "ensemble", ["filename", "race", "age_class"]] for p in preds])
        self.table = ens.drop_duplicates("filename").sort_values("filename").reset_index(drop=True)
        self.index = pd.Index(self.table["filename"])
        self.race = self.table["race"].to_numpy(int)
        self.y = self.table["age_class"].to_numpy(int)
        strata = self.race * N_CLASSES + self.y
        self.weights = np.ones((n_boot + 1, len(self.table)))
        gen = rng(seed, "faces-bootstrap", key, len(self.table))
        for s in np.unique(strata):
            members = np.flatnonzero(strata == s)
            self.weights[1:, members] = gen.multinomial(len(members), np.full(len(members), 1 / len(members)),
                                                         size=n_boot)
        _, n = cell_counts(self.race, self.y, np.ones(len(self.y)))
        self.shares = pooled_age_shares(n)          # the standard age mix: every tested face once

    def counts(self, pred: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(F,) per face: times tested, times right, times within one class, from a predictions table."""
        ens = pred[pred["model"] == "ensemble"]
        pos = self.index.get_indexer(ens["filename"])
        if (pos < 0).any():
            raise ValueError(f"{ens['filename'].iloc[int(np.argmax(pos < 0))]} is not among the study's test faces")
        p, y = ens["pred1"].to_numpy(int), ens["age_class"].to_numpy(int)
        F = len(self.table)
        return (np.bincount(pos, minlength=F).astype(float), np.bincount(pos, p == y, minlength=F),
                np.bincount(pos, np.abs(p - y) <= 1, minlength=F))

    def measures(self, pred: pd.DataFrame, reference: str) -> dict[str, np.ndarray]:
        """Every measure of one run (measures.py names; B+1 rows), plus accuracy_overall."""
        n_f, k_f, k1_f = self.counts(pred)
        w = self.weights * n_f
        with np.errstate(invalid="ignore", divide="ignore"):
            right, within = np.where(n_f > 0, k_f / n_f, 0.0), np.where(n_f > 0, k1_f / n_f, 0.0)
        k, n = cell_counts(self.race, self.y, right, w)
        k1, _ = cell_counts(self.race, self.y, within, w)
        out = {"accuracy_standardised": accuracy_standardised(k, n, self.shares), "accuracy": accuracy(k, n),
               "accuracy_within_one": accuracy(k1, n)}
        for m in BY_RACE:
            out[f"gap_{m}"] = gap(out[m], reference)
        out["group_min_accuracy"] = np.nanmin(out["accuracy"], axis=1)
        out["accuracy_overall"] = k.sum(axis=(1, 2)) / n.sum(axis=(1, 2))
        return out


def degenerate_run(pred: pd.DataFrame) -> str | None:
    ens = pred[pred["model"] == "ensemble"]
    return degenerate(ens["pred1"].to_numpy(), ens["age_class"].to_numpy())


def stack(per_replicate: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """[{measure: (B+1, ...)}] over replicates -> {measure: (R, B+1, ...)}."""
    return {m: np.stack([d[m] for d in per_replicate]) for m in per_replicate[0]}


def levels(values: dict[str, np.ndarray]) -> list[dict]:
    """Each measure's level over replicates (a race's for a by-race one), with its 95% interval."""
    rows = []
    for m, v in values.items():
        for group, series in ([(r, v[:, :, i]) for i, r in enumerate(RACES)] if v.ndim == 3 else [(None, v)]):
            c = change(series)
            lo, hi = c.interval()
            if not m.startswith("gap"):          # an accuracy: its interval stays within [0, 1]
                lo, hi = max(0.0, lo), min(1.0, hi)
            rows.append({"statistic": m, "group": group, "value": c.estimate, "ci_low": lo, "ci_high": hi,
                         "se_replicates": c.se_replicates, "se_faces": c.se_faces, "replicates": c.replicates})
    return rows


def compare(family: str, pairs: list[tuple[str, str, str, str]], values: dict, broken: dict[tuple, str],
            statistics: tuple[str, ...], reference_race: str) -> list[Comparison]:
    """A family: for each (run, phase, reference, reference phase) and statistic, run minus reference
    per replicate. `values[(tag, phase)]`: stacked measures; `broken[(tag, phase)]`: why a run gets no
    verdict. A by-race statistic is compared for the reference race, or for the race a pair names as its
    fifth item (a group scenario's own race)."""
    items = []
    for run, phase, ref, ref_phase, *race in pairs:
        why = broken.get((run, phase)) or broken.get((ref, ref_phase))
        for stat in statistics:
            a, b = values[(run, phase)][stat], values[(ref, ref_phase)][stat]
            group = None
            if a.ndim == 3:
                group = race[0] if race else reference_race
                i = RACES.index(group)
                a, b = a[:, :, i], b[:, :, i]
            who = run if broken.get((run, phase)) else ref
            fields_ = dict(run=run, phase=phase, reference=ref, reference_phase=ref_phase, statistic=stat, group=group)
            items.append((fields_, f"{who} is degenerate ({why})" if why else a - b))
    return decide(family, items)


def aa_false_positives(values: dict, broken: dict, replicates: int) -> dict:
    """The A/A arm judged one replicate at a time, as a one-replicate study (the quick start) would
    judge it (faces' error only): the share of replicates where uniform-b 'differs' from uniform. Near
    5% when a single replicate's intervals are honest; above it when training noise is left out."""
    if ("uniform-b", "before") not in values or broken.get(("uniform-b", "before")) or broken.get(("uniform", "before")):
        return {}
    d = values[("uniform-b", "before")][PRIMARY] - values[("uniform", "before")][PRIMARY]
    calls = [not verdict(change(d[r:r + 1]), 1)[0].startswith("inconclusive") for r in range(replicates)]
    return {"replicates": replicates, "false_positives": int(sum(calls)), "rate": float(np.mean(calls))}


def dose_response(comparisons: list[Comparison], doses: dict[str, float]) -> dict:
    """The control's primary change by dose, and the smallest dose the study detected (None: none)."""
    def num(x: float) -> float | None:         # no verdict (a degenerate run): no numbers either
        return float(x) if np.isfinite(x) else None
    rows = sorted(({"dose": doses[c.run], "change": num(c.change), "ci_low": num(c.ci_low_adjusted),
                    "ci_high": num(c.ci_high_adjusted), "outcome": c.outcome, "verdict": c.verdict} for c in comparisons
                   if c.run in doses and c.statistic == PRIMARY), key=lambda r: r["dose"])
    seen = [r["dose"] for r in rows if r["outcome"] in ("higher", "lower")]
    return {"doses": rows, "smallest_detected": min(seen) if seen else None}


def tidy_counts(study: str, test: str, tag: str, phase: str, replicate: int, pred: pd.DataFrame) -> pd.DataFrame:
    """Long rows (study, test, configuration, phase, replicate, fold, race, age class): n, correct and
    accuracy in points, the table `load_study` reads."""
    ens = pred[pred["model"] == "ensemble"].assign(correct=lambda f: (f["pred1"] == f["age_class"]).astype(int))
    g = ens.groupby(["fold", "race", "age_class"], as_index=False).agg(n=("correct", "size"), correct=("correct", "sum"))
    g["race"] = [RACES[i] for i in g["race"]]
    g["age_class"] = [AGE_CLASSES[i] for i in g["age_class"]]
    g["accuracy_points"] = 100 * g["correct"] / g["n"]
    return g.assign(study=study, test=test, configuration=tag, phase=phase, replicate=replicate)[
        ["study", "test", "configuration", "phase", "replicate", "fold", "race", "age_class", "n", "correct",
         "accuracy_points"]]


def placement_shares(exps_by_tag: dict, reference: str) -> dict:
    """What the placements change: each shard's share of the reference race and of flagged faces among
    its training faces (mean over folds, replicate 0), against the range uniform's shards show by
    chance; and how often each race is flagged as likely to ask (the likelihood model's race-blindness)."""
    ref = RACES.index(reference)
    by_shard = {}
    for tag, exps in exps_by_tag.items():
        per_fold = []
        for p in exps[0].partitions:
            train = p[p["role"] == "train"]
            g = train.groupby("shard")
            per_fold.append(pd.DataFrame({"reference": g["race"].apply(lambda r: float((r == ref).mean())),
                                          "flagged": g["high_likelihood"].mean().astype(float)}))
        mean = sum(per_fold) / len(per_fold)
        by_shard[tag] = {"reference_share": mean["reference"].tolist(), "flagged_share": mean["flagged"].tolist()}
    chance = [v for t in ("uniform", "uniform-b") if t in by_shard for v in by_shard[t]["reference_share"]]
    out = {"reference_race": reference, "by_shard": by_shard,
           "uniform_range": [min(chance), max(chance)] if chance else None}
    if exps_by_tag:
        table = next(iter(exps_by_tag.values()))[0].partitions[0]
        flagged = table.groupby("race")["high_likelihood"].mean()
        out["flagged_by_race"] = {RACES[int(i)]: float(v) for i, v in flagged.items()}
    return out


def load_study(study_dir) -> pd.DataFrame:
    """A study's tidy counts (reports/<study>/counts.csv.gz): one row per study, test, configuration,
    phase, replicate, fold, race and age class, with n, correct and accuracy in points.

        from sisa.study import load_study
        counts = load_study("reports/cpu")
        counts.groupby(["configuration", "race"])[["correct", "n"]].sum()
    """
    from ..layout import StudyLayout
    from pathlib import Path
    return pd.read_csv(StudyLayout(Path(study_dir)).counts)
