"""A study's report (format 2, a study of replicates): report.json holds every number (analysis.py),
report.md is rendered from it alone, then the figures, the per-face predictions and the tidy counts
(counts.csv.gz, read with `load_study`).

Reports written before replicates (format 1: reports/published/) are rendered by sisa/report.py.
"""
from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pandas as pd

from .. import plots
from .. import report as v1
from ..analysis import POOLED, POOLED_SMALLER, POOLED_TOP, analyse
from ..data import RACES
from ..errors import SisaError
from ..intervals import Comparison, replicates_for
from ..layout import StudyLayout, SummaryLayout
from ..store import write_bytes, write_json, write_text
from .numbers import PRIMARY, tidy_counts

STATISTICS = {"gap_accuracy_standardised": "age-standardised gap", "gap_accuracy": "plain accuracy gap",
              "gap_accuracy_within_one": "within-one gap", "group_min_accuracy": "worst race's accuracy",
              "accuracy_overall": "accuracy (all faces)", "accuracy_standardised": "age-standardised accuracy",
              "accuracy": "accuracy", "accuracy_within_one": "accuracy within one class"}


def title(tag: str) -> str:
    """A configuration as the report names it; the mean over the configurations serving the scenarios
    (analysis.POOLED) as such."""
    return "the mean over configurations" if tag == POOLED else v1.config_title(tag)


def write_report(layout: StudyLayout, settings, opts, summaries_dir: Path, progress: dict,
                 seconds_total: float) -> Path:
    data = analyse(settings, opts.checkpoints_dir, summaries_dir, progress, opts.device)
    data["seconds_total"] = seconds_total
    data["figures"] = figures(layout, data)
    data["predictions"] = save_predictions(layout, data, summaries_dir)
    data["counts"] = save_counts(layout, data, summaries_dir)
    write_json(layout.report_json, data, sort_keys=False)
    write_text(layout.report_md, render(data))
    return layout.report_md


# ---- formatting ---------------------------------------------------------------------------------
def pts(x, signed: bool = True) -> str:
    return "–" if x is None or not np.isfinite(x) else (f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}")


def said(c: Comparison) -> str:
    """'+0.4 [-1.1, +1.8] inconclusive (detectable ±2.5)': the change, the interval its verdict reads."""
    if c.outcome == "none":
        return "no verdict (a degenerate run, below)"
    return f"{pts(c.change)} [{pts(c.ci_low_adjusted)}, {pts(c.ci_high_adjusted)}] {c.verdict}"


def comparisons(t: dict, family: str) -> list[Comparison]:
    return [Comparison.from_dict(d) for d in t["comparisons"].get(family, [])]


def level(t: dict, tag: str, statistic: str, group: str | None = None, phase: str = "before") -> dict | None:
    return next((r for r in t["levels"].get(f"{tag} {phase}", []) if r["statistic"] == statistic and
                 r["group"] == group), None)


def lv(r: dict | None) -> str:
    return "–" if r is None else f"{pts(r['value'], False)} [{pts(r['ci_low'], False)}, {pts(r['ci_high'], False)}]"


# ---- the report ---------------------------------------------------------------------------------
def render(r: dict) -> str:
    s = r["settings"]
    lines = [f"# Study `{r['study']}`", "", summary_line(r), ""]
    for test, t in r["tests"].items():
        h = "##" if len(r["tests"]) == 1 else "###"
        if len(r["tests"]) > 1:
            lines += [f"## {v1.TEST_TITLES.get(test, test)}", ""]
        lines += answer(t, s, h) + verdicts(t, h) + accuracy(t, h) + control(t, h) + aa(t, h) + placement(t, h)
        old = h[:-2]                        # sisa/report.py's sections add "##" to the heading they are given
        lines += forgetting(t, h) + approximate(t, h) + degenerate(t, h) + costs(t, s, h) + [x.replace("mean over seeds", "mean over replicates")
                                                          for x in v1.aggregations(t, old)] + composition(r, t, h)
        lines += [f"{h} Figures", ""] + [f"![{k}]({v})" for k, v in r.get("figures", {}).get(test, {}).items()] + [""]
    lines += [v1.settings_table(r), "", v1.machine_table(r), ""] + method(r)
    return "\n".join(lines).rstrip() + "\n"


def summary_line(r: dict) -> str:
    s, m = r["settings"], r["machine"]
    runs = sum(len(t["runs"]) for t in r["tests"].values()) * s["replicates"]
    return (f"Preset `{s['preset']}` on {m['device']}: {runs} training runs ({s['replicates']} replicate(s) of "
            f"{len(next(iter(r['tests'].values()))['runs'])} configurations), {v1.secs(r.get('seconds_total'))} in all. "
            f"Every gap is measured against {next(iter(r['tests'].values()))['reference_race']}, fixed in advance.")


def answer(t: dict, s: dict, h: str) -> list[str]:
    """The answer in plain words first: each primary comparison, what the study can detect."""
    ref = t["reference_race"]
    out = [f"{h} The answer", "",
           f"The primary statistic is the **age-standardised gap**: the mean accuracy of the other four races minus "
           f"{ref}'s, each race scored on the same (pooled) age mix; positive means {ref} is served worse. Changes are "
           f"in points, paired within each of {t['faces']['replicates']} replicate(s), with intervals at the level "
           "their verdict reads (Bonferroni within the family).", ""]
    plain = placement_words(t)
    if plain:
        out.append(f"- **In plain words**: {plain}")
    for family, lead in (("placement vs uniform", "Placement versus uniform SISA"),
                         ("A/A: uniform-b vs uniform", "Two uniform placements against each other (A/A: the truth is no change)"),
                         ("control vs uniform", "The positive control (label noise on the reference race) versus uniform"),
                         ("vs baseline", "Each SISA configuration versus the 1x1 baseline"),
                         ("after vs before unlearning", "Each run after its requests versus before")):
        cs = comparisons(t, family)
        if cs:
            out.append(f"- **{lead}**: " + "; ".join(f"{title(c.run)} {said(c)}" for c in cs) + ".")
    f = t.get("forgetting")
    if f:
        out += [f"- **Who asks, in plain words**: {sentence}" for sentence in who_asks_words(t)]
        price = price_words(t)
        if price:
            out.append(f"- **Cheaper unlearning, and its fairness price**: {price}")
        top = f"{max(f['volumes']):g}"
        cs = [c for fam in WHO_ASKS
              for c in comparisons(t, fam) if c.phase.endswith(f" {top}") and c.statistic == PRIMARY]
        if cs:
            out.append(f"- **Who asks, at {100 * float(top):g}% of the training faces** (a group's requests against as "
                       "many random ones): " + "; ".join(f"{title(c.run)}, {c.phase.rsplit(' ', 1)[0]} {said(c)}"
                                                        for c in cs) + ".")
        cs = [c for c in comparisons(t, "forgetting: after vs before") if c.phase.endswith(f" {top}") and
              c.statistic == PRIMARY]
        if cs:
            out.append(f"- **After forgetting {100 * float(top):g}%, against before**: " + "; ".join(
                f"{labelled(c.run, c.phase)} {said(c)}" for c in cs) + ".")
    head, lines = forgetting_words(t)
    if head:
        out.append(f"- **Approximate unlearning, forgetting by race**: {head}")
    for where, what in lines:
        out.append(f"- **Forgetting by race, {where}** (each approximate method's forget-face AUC minus exact "
                   f"retraining's, x100, by race): {what}.")
    dr = t.get("dose_response") or {}
    if dr.get("doses"):
        small = dr["smallest_detected"]
        judged = [d for d in dr["doses"] if d["outcome"] != "none"]
        out.append("- **What this study detects**: "
                   + (f"the smallest control dose it detected is {100 * small:g}%" if small is not None else
                      "it detected none of the control doses it ran" if judged else
                      "nothing can be said: no control dose could be judged (degenerate runs, below)") +
                   (f"; the A/A arm was called different in {t['aa']['false_positives']} of {t['aa']['replicates']} "
                    "replicate(s) judged alone (faces' error only)" if t.get("aa") else "") + ".")
    need = replicates_needed(t)
    if need:
        out.append(f"- **Replicates for a {100 * TARGET:g}-point placement effect**: {need}.")
    return out + [""]


WHO_ASKS = (POOLED_TOP, "forgetting: group vs random")  # the mean first
SMALL = 0.02        # a group's own accuracy change this study could have seen counts as "did not fall" (who_asks_words)
TARGET = 0.01       # the placement effect a study should detect (issue 23): 1 point of the age-standardised gap


def replicates_needed(t: dict) -> str:
    """How many replicates each primary placement contrast needs to detect TARGET, projected from this
    study's own spread between replicates and shared faces' error; '' with one replicate (no spread yet)."""
    cs = [c for c in comparisons(t, "placement vs uniform") if c.outcome != "none"]
    if not cs or min(c.replicates for c in cs) < 2:
        return ""
    words = []
    for c in cs:
        n = replicates_for(c.se_replicates, c.se_faces, c.replicates, TARGET, family=len(cs))
        words.append(f"{title(c.run)} {n or 'more than 1000 (the faces tested limit it)'} "
                     f"(detectable ±{100 * c.detectable:.1f} now)")
    return ("; ".join(words) + f", projected from this study's {cs[0].replicates} replicates (spread between them and "
            "the faces' error they share)")


def verdicts(t: dict, h: str) -> list[str]:
    rows = []
    for family in t["comparisons"]:
        for c in comparisons(t, family):
            rows.append([family, f"{labelled(c.run, c.phase)} vs {labelled(c.reference, c.reference_phase)}", STATISTICS.get(c.statistic, c.statistic)
                         + (f" ({c.group})" if c.group else ""), said(c),
                         f"{pts(c.se_replicates, False)} / {pts(c.se_faces, False)}"])
    return [f"{h} Every comparison", "",
            "Change in points [interval at the family's Bonferroni level] and verdict; the standard error's two parts: "
            "between replicates (training and placement) / which faces were tested.", "",
            v1.table(["family", "comparison", "statistic", "change and verdict", "se: replicates / faces"], rows), ""]


def labelled(tag: str, phase: str) -> str:
    """A configuration in a phase: 'uniform', 'uniform after', 'uniform (group:black 0.05)'."""
    if phase in ("before", "after"):
        return title(tag) + (" after" if phase == "after" else "")
    sc, _, v = phase.rpartition(" ")           # a scenario's volume: 'group:black 0.05'
    return f"{title(tag)} ({sc}, {100 * float(v):g}%)" if sc else f"{title(tag)} ({phase})"


def forgetting(t: dict, h: str) -> list[str]:
    """Scenarios at a volume: the gap after each volume, its change from before, who asks (a group
    against random at the same volume), SISA against the retrained monolith, and what it cost."""
    f = t.get("forgetting")
    if not f:
        return []
    ref = t["reference_race"]

    def one(families: str | tuple[str, ...], tag: str, phase: str, reference_phase: str | None = None) -> str:
        c = next((c for fam in ((families,) if isinstance(families, str) else families) for c in comparisons(t, fam)
                  if c.run == tag and c.phase == phase and c.statistic == PRIMARY
                  and (reference_phase is None or c.reference_phase == reference_phase)), None)
        return said(c) if c else "–"
    rows = []
    for tag in f["configs"]:
        for sc in f["scenarios"]:
            for v in f["volumes"]:
                ph = f"{sc} {v:g}"
                rows.append([title(tag), sc, f"{100 * v:g}%", lv(level(t, tag, PRIMARY, phase=ph)),
                             one("forgetting: after vs before", tag, ph),
                             one("forgetting: group vs random", tag, ph) if sc.startswith("group:") else "",
                             one("forgetting: SISA vs retrained monolith", tag, ph) if tag != "baseline" else ""])
    if comparisons(t, POOLED_TOP):
        rows += [[title(POOLED), sc, f"{100 * v:g}%", lv(level(t, POOLED, PRIMARY, phase=f"{sc} {v:g}")), "–",
                  one((POOLED_TOP, POOLED_SMALLER), POOLED, f"{sc} {v:g}")
                  if sc.startswith("group:") else "", ""] for sc in f["scenarios"] if sc == "random" or
                 sc.startswith("group:") for v in f["volumes"]]
    cost_rows = [[title(c["config"]), c["scenario"], f"{100 * c['volume']:g}%", f"{c['faces_served'] or 0:,.0f}",
                  f"{c['shard_models_retrained'] or 0:.1f}", f"{c['faces_x_epochs'] or 0:,.0f}",
                  "–" if c["speedup_vs_retrained_monolith"] is None else f"{c['speedup_vs_retrained_monolith']:.2f}x",
                  v1.secs(c["serve_seconds"]),
                  "–" if c["seconds_speedup_vs_retrained_monolith"] is None else
                  f"{c['seconds_speedup_vs_retrained_monolith']:.2f}x"] for c in f["costs"]]
    return [f"{h} Many requests: who asks and how many", "",
            f"Each scenario's faces forgotten at each volume (a fraction of each fold's training faces, the same count "
            f"for every scenario, nested: each volume on top of the last), served exactly on a copy of every run: SISA "
            f"retrains each affected shard once per step, the 1x1 baseline is retrained from scratch without the faces. "
            f"The primary gap (others - {ref}, age-standardised) after each volume with its 95% interval, its change "
            "from before, a group's change against random requests at the same volume (who asks, separated from how "
            "many), and SISA against the retrained monolith on the same requests; changes in points, intervals at the "
            "family's Bonferroni level. The last rows average every configuration's measures within each replicate "
            "(the same faces): who asks is a question about requests, and the mean averages out each configuration's "
            "own retraining noise.", "",
            v1.table(["configuration", "scenario", "volume", "gap after", "change from before", "group - random",
                      "SISA - retrained monolith"], rows), "",
            "What each step cost (mean over replicates, summed over folds): faces served, shard models retrained, faces x "
            "epochs retrained, the speed-up over retraining the monolith on the same requests, in images and in wall "
            "seconds of serving.", "",
            v1.table(["configuration", "scenario", "volume", "faces", "shard models", "faces x epochs",
                      "speed-up vs monolith", "serving", "in seconds"], cost_rows), ""]


def race_gaps(mem: dict, method: str) -> dict[str, tuple | None]:
    """{race: (AUC gap to retrained, low, high)} of a method on one scenario and volume: the two AUCs'
    interval half-widths added in quadrature (they come from different models)."""
    a, r = mem["models"][method]["attack"]["logistic"]["by_race"], mem["models"]["retrained"]["attack"]["logistic"]["by_race"]
    out = {}
    for race in RACES:
        if race not in a or race not in r or None in (a[race]["auc_forget"], r[race]["auc_forget"]) \
                or None in (*a[race]["auc_forget_ci"], *r[race]["auc_forget_ci"]):
            out[race] = None
            continue
        gap = a[race]["auc_forget"] - r[race]["auc_forget"]
        half = np.hypot(np.diff(a[race]["auc_forget_ci"])[0] / 2, np.diff(r[race]["auc_forget_ci"])[0] / 2)
        out[race] = (gap, gap - half, gap + half)
    return out


def approximate(t: dict, h: str) -> list[str]:
    """Approximate methods against exact retraining: accuracy, the membership attack by race, cost."""
    f = t.get("forgetting") or {}
    mem = f.get("membership")
    if not mem:
        return []
    out = [f"{h} Approximate unlearning against exact retraining", "",
           "Each method starts from the trained 1x1 baseline and forgets the scenario's faces within a tenth of "
           "retraining's image-steps; *retrained* is the baseline trained again from scratch without them (the exact "
           "reference). The membership attack (logistic regression on each face's loss and confidence, fitted on retained "
           "training faces against half of the test faces) scores the forget faces against the other half: AUC 0.5 means "
           "they look like faces the model never saw. Pooled over folds and replicates, 95% bootstrap intervals. Each "
           "method's learning rate was chosen per replicate from a grid on a validation split of its training faces, "
           "by the smallest average gap to a model retrained on that split (`tuning/<run>.json`; test faces never "
           "read).", ""]
    for key, m in mem.items():
        sc, _, v = key.rpartition(" ")
        out += [f"**{sc} at {100 * float(v):g}% of the training faces.** "
                + (f"No forgetting verdict: {m['too_weak']}." if m["too_weak"] else
                   "The attack tells the original model's forget faces from test faces, so it can judge forgetting."), ""]
        rows = []
        for name, p in m["models"].items():
            a = p["attack"]["logistic"]
            lo, hi = a["auc_forget_ci"]
            rows.append([name + (" (DIVERGED)" if p["diverged"] else ""),
                         *(v1.pct(p["accuracy"][side]["all"]) for side in ("forget", "retain", "test")),
                         f"{a['auc_forget']:.3f} [{lo:.3f}, {hi:.3f}]" if a["auc_forget"] is not None else "–",
                         f"{100 * p['average_gap_to_retrained']:.1f}",
                         "–" if p["image_steps"] is None else f"{p['image_steps']:,.0f}",
                         v1.secs(p["seconds"]),
                         " / ".join(f"{x:.2g}" for x in p.get("learning_rates") or []) or "–"])
        out += [v1.table(["model", "forget acc. %", "retain acc. %", "test acc. %", "forget AUC [95%]",
                          "average gap to retrained (points)", "image-steps", "seconds", "learning rate"], rows), ""]
        race_rows = []
        for name in m["models"]:
            if name in ("original", "retrained"):
                continue
            g = race_gaps(m, name)
            race_rows.append([name] + ["–" if g[r] is None else f"{100 * g[r][0]:+.1f} [{100 * g[r][1]:+.1f}, "
                                       f"{100 * g[r][2]:+.1f}]" for r in RACES])
        if race_rows:
            out += ["Forget-face AUC minus retrained's, by race (x100; positive: that race's forgotten faces are still "
                    "recognisable as members where exact retraining's are not):", "",
                    v1.table(["method", *RACES], race_rows), ""]
    return out


def accuracy(t: dict, h: str) -> list[str]:
    tags = list(t["runs"])
    rows = [[title(tag), lv(level(t, tag, "accuracy_overall"))]
            + [lv(level(t, tag, "accuracy_standardised", r)) for r in RACES] + [lv(level(t, tag, PRIMARY))]
            for tag in tags]
    return [f"{h} Accuracy by race", "",
            "Age-standardised accuracy in % (each race on the pooled age mix), mean over replicates with 95% intervals "
            "(unadjusted), before unlearning; last column: the primary gap.", "",
            v1.table(["configuration", "all faces", *RACES, f"gap (others - {t['reference_race']})"], rows), ""]


def control(t: dict, h: str) -> list[str]:
    dr = t.get("dose_response") or {}
    if not dr.get("doses"):
        return []
    rows = [[f"{100 * d['dose']:g}%", f"{pts(d['change'])} [{pts(d['ci_low'])}, {pts(d['ci_high'])}]",
             d["verdict"] if d["outcome"] != "none" else "no verdict (a degenerate run, below)"] for d in dr["doses"]]
    return [f"{h} The positive control, dose by dose", "",
            f"Label noise on the {t['reference_race']} training faces at each dose; the change of the primary gap "
            "against uniform SISA.", "", v1.table(["dose", "change [interval]", "verdict"], rows), ""]


def aa(t: dict, h: str) -> list[str]:
    a = t.get("aa") or {}
    if not a:
        return []
    return [f"{h} The A/A calibration", "",
            f"uniform-b is a second uniform placement, so its difference from uniform is noise. Judged one replicate at a "
            f"time, as a one-replicate study judges itself (faces' error only), it was called different in "
            f"{a['false_positives']} of {a['replicates']} replicate(s) ({100 * a['rate']:.0f}%; honest intervals: about "
            "5%). Over all replicates: " + "; ".join(said(c) for c in comparisons(t, "A/A: uniform-b vs uniform")) + ".", ""]


def placement(t: dict, h: str) -> list[str]:
    p = t.get("placement") or {}
    if not p.get("by_shard"):
        return []
    rows = [[title(tag), " / ".join(f"{100 * v:.1f}" for v in d["reference_share"]),
             " / ".join(f"{100 * v:.1f}" for v in d["flagged_share"])] for tag, d in p["by_shard"].items()]
    rng_ = p.get("uniform_range")
    flagged = p.get("flagged_by_race", {})
    return [f"{h} What the placements change", "",
            f"Each shard's share (%) of {p['reference_race']} faces and of faces flagged likely to ask, among its training "
            "faces (replicate 0, mean over folds)"
            + (f"; uniform's shards range {100 * rng_[0]:.1f}-{100 * rng_[1]:.1f}% by chance" if rng_ else "") + ". "
            "How often each race is flagged: " + ", ".join(f"{r} {100 * v:.1f}%" for r, v in flagged.items())
            + ": the likelihood model is nearly race-blind, so placing by it moves races little.", "",
            v1.table(["configuration", f"{p['reference_race']} share by shard", "flagged share by shard"], rows), ""]


def costs(t: dict, s: dict, h: str) -> list[str]:
    """Expected and served cost per request, per configuration (the SISA paper's schedule column only
    when the study used another schedule)."""
    other = s["slice_epochs"] != "sisa"
    rows = []
    for tag, u in t["unlearning"].items():
        e, ei, es = u["expected"]["shared"], u["expected"]["independent"], u["expected_sisa_schedule"]["shared"]
        b = u["batches"]["shared"]
        sv = u["served"]
        served = (f"{sv['requests']}: {v1.pct(sv['share_of_full'])}%, {v1.secs(sv['wall_seconds_per_request'])}"
                  + {True: " (verified)", False: " (NOT verified)", None: ""}[sv["verified"]]) if sv["requests"] else \
            "none (`--sample 0`)"
        rows.append([title(tag), f"{e['speedup_vs_baseline']:.2f}x / {v1.pct(e['expected_share_of_full'])}%",
                     *([f"{es['speedup_vs_baseline']:.2f}x / {v1.pct(es['expected_share_of_full'])}%"] if other else []),
                     f"{ei['speedup_vs_baseline']:.2f}x / {v1.pct(ei['expected_share_of_full'])}%",
                     *(f"{b[k]['shards_retrained']:.2f}, {v1.pct(b[k]['batch_share_of_full'])}%" if k in b else "–"
                       for k in ("5", "20")), served])
    head = ["configuration", "shared model: speed-up vs 1x1 / % of all shards",
            *(["the same, SISA paper's schedule"] if other else []), "independent model: vs 1x1 / %",
            "batches of 5 (shared model)", "batches of 20 (shared model)", "served"]
    return [f"{h} Unlearning cost", "",
            "Expected retraining per request from the likelihood model (no training): speed-up over retraining the 1x1 "
            "baseline, and share of retraining all shards. Request models: *shared* (one latent 'knows the law' draw "
            "drives both the high-likelihood flag and the request, the original's model) and *independent* (requests "
            "proportional to k, independent of the flag). Batches, under the shared model: requests gathered and served "
            "together (shards retrained per batch, batch cost as % of all shards). Served: the study's requests, "
            "retrained, committed and verified (measured share of all shards, wall seconds per request).", "",
            v1.table(head, rows), ""]


def composition(r: dict, t: dict, h: str) -> list[str]:
    poster = r["poster"]["composition"]
    rows = [[label, *(f"{v1.pct(row[race])} ({poster[label][i]})" for i, race in enumerate(RACES)), v1.pct(row["share"])]
            for label, row in t["composition"].items()]
    return [f"{h} Who is flagged likely to ask", "",
            "Race shares (%) of the high- and low-likelihood training faces, pooled over folds (replicate 0); in "
            "parentheses the poster's, from another model's run and test set, for orientation only:", "",
            v1.table(["training faces", *RACES, "share of faces"], rows), ""]


def degenerate(t: dict, h: str) -> list[str]:
    if not t.get("degenerate"):
        return []
    return [f"{h} Degenerate runs (no verdict)", ""] + [f"- {title(d['config'])} ({d['phase']}): {d['why']}"
                                                        for d in t["degenerate"]] + [""]


def method(r: dict) -> list[str]:
    return ["## Method", "",
            "Each replicate draws its own fold assignment, likelihood flags, partitions and initial weights, shared by "
            "every configuration of the replicate. Each run's measures are computed on one set of stratified resamples "
            "of the test faces (race x age class), shared by every run. A change's standard error adds the spread of "
            "its per-replicate values (over the square root of the replicates) and the spread of its mean over the face "
            "resamples; the interval is a t interval (Welch-Satterthwaite degrees of freedom) at the family's "
            "Bonferroni level, which is the level its verdict uses, so an interval that excludes 0 is a verdict. A run "
            "predicting one class or no better than the commonest class gets no verdict. See docs/statistics.md.", ""]


# ---- files beside the report --------------------------------------------------------------------
def figures(layout: StudyLayout, data: dict) -> dict:
    out = {}
    for test, t in data["tests"].items():
        figs = {}
        top = {title(tag): pd.Series({r: (level(t, tag, "accuracy_standardised", r) or {}).get("value", np.nan)
                                      for r in RACES}) for tag in t["runs"]}
        drop = {k: v.max() - v for k, v in top.items()}
        name = f"{test}-accuracy"
        plots.bar_chart(top, drop, layout.figure(name), title="Age-standardised accuracy by race (mean over replicates); "
                                                              "grey: each race's distance to the best")
        figs["accuracy by race"] = layout.figure(name).name
        rows = {fam: [{"run": title(c.run) + (" after" if c.phase == "after" else ""), "reference": title(c.reference),
                       "statistic": STATISTICS[c.statistic], "change": c.change, "ci_low": c.ci_low_adjusted,
                       "ci_high": c.ci_high_adjusted, "verdict": c.outcome} for c in comparisons(t, fam)
                      if c.outcome != "none"] for fam in t["comparisons"]
                if "secondary" not in fam and not fam.startswith("forgetting")}
        name = f"{test}-comparisons"
        plots.contrast_chart(rows, layout.figure(name))
        figs["primary comparisons"] = layout.figure(name).name
        if t.get("forgetting"):
            rows = [{"config": title(c.run), "scenario": c.phase.rsplit(" ", 1)[0], "volume": float(c.phase.rsplit(" ", 1)[1]),
                     "change": c.change, "ci_low": c.ci_low_adjusted, "ci_high": c.ci_high_adjusted}
                    for c in comparisons(t, "forgetting: after vs before") if c.statistic == PRIMARY]
            name = f"{test}-forgetting"
            plots.forgetting_curves(rows, t["reference_race"], layout.figure(name))
            figs["forgetting by volume"] = layout.figure(name).name
        mem = (t.get("forgetting") or {}).get("membership")
        if mem:
            panels = {}
            for key, m in mem.items():
                sc, _, v = key.rpartition(" ")
                panels[f"{sc}, {100 * float(v):g}%"] = {n: race_gaps(m, n) for n in m["models"]
                                                         if n not in ("original", "retrained")}
            name = f"{test}-forgetting-by-race"
            plots.forgetting_by_race(panels, layout.figure(name))
            figs["forgetting by race"] = layout.figure(name).name
        if (t.get("dose_response") or {}).get("doses"):
            name = f"{test}-dose-response"
            plots.dose_response(t["dose_response"]["doses"], t["reference_race"], layout.figure(name))
            figs["positive control by dose"] = layout.figure(name).name
        out[test] = figs
    return out


def runs_of(t: dict) -> list[tuple[str, str, int, str]]:
    """(configuration, phase, replicate, summary name) of every run of a test."""
    out = [(tag, phase, r, n) for tag, runs in t["runs"].items() for phase in ("before", "after")
           for r, n in enumerate(runs[phase] or [])]
    return out + [(tag, phase, r, n) for tag, phases in ((t.get("forgetting") or {}).get("runs") or {}).items()
                  for phase, names in phases.items() for r, n in enumerate(names)]


def save_counts(layout: StudyLayout, data: dict, summaries_dir: Path) -> str:
    frames = [tidy_counts(data["study"], test, tag, phase, r, pd.read_csv(SummaryLayout(Path(summaries_dir), n).predictions))
              for test, t in data["tests"].items() for tag, phase, r, n in runs_of(t)]
    write_bytes(layout.counts, gzip.compress(pd.concat(frames).to_csv(index=False).encode(), mtime=0))
    return layout.counts.name


def save_predictions(layout: StudyLayout, data: dict, summaries_dir: Path) -> dict:
    """Per test kind, the test faces once (gzipped CSV, sorted by file name) and, per run, a small .npz:
    for each face it tested (`face`, an index into that file, and its `fold`) the ensemble's top-2 and
    every shard model's top-1, and for runs before unlearning the ensemble's summed logits (float16)."""
    saved = {}
    for test, t in data["tests"].items():
        preds = {n: pd.read_csv(SummaryLayout(Path(summaries_dir), n).predictions) for *_, n in runs_of(t)}
        ens = pd.concat([p[p["model"] == "ensemble"] for p in preds.values()])
        faces = ens[["filename", "race", "age_class"]].drop_duplicates("filename").sort_values("filename")
        faces = faces.reset_index(drop=True)
        write_bytes(layout.faces_file(test), gzip.compress(faces.to_csv(index=False).encode(), mtime=0))
        index = pd.Index(faces["filename"])
        for tag, phase, _, n in runs_of(t):
            pred = preds[n]
            e = pred[pred["model"] == "ensemble"].sort_values(["fold", "filename"])
            summary = SummaryLayout(Path(summaries_dir), n)
            with np.load(summary.logits) as z:
                key = pd.MultiIndex.from_arrays([z["fold"], z["filename"].astype(str)])
                order = key.get_indexer(pd.MultiIndex.from_arrays([e["fold"], e["filename"]]))
                if (order < 0).any():
                    raise SisaError(f"{summary.logits} lacks {int((order < 0).sum())} of run {n}'s test faces; evaluate "
                                    "its run again with evaluate.py --overwrite")
                shard_logits = z["shard_logits"][:, order]
            shards = [pred[pred["model"] == f"shard-{s}"].sort_values(["fold", "filename"])["pred1"].to_numpy()
                      for s in range(shard_logits.shape[0])]
            arrays = {"face": index.get_indexer(e["filename"]).astype(np.int32), "fold": e["fold"].to_numpy(np.uint8),
                      "pred1": e["pred1"].to_numpy(np.uint8), "pred2": e["pred2"].to_numpy(np.uint8),
                      "shard_pred1": np.stack(shards).astype(np.uint8)}
            if phase == "before":
                arrays["ensemble_logits"] = shard_logits.sum(0).astype(np.float16)
            buf = io.BytesIO()
            np.savez_compressed(buf, **arrays)
            write_bytes(layout.predictions_file(n), buf.getvalue())
            saved[n] = layout.predictions_file(n).relative_to(layout.root).as_posix()
    return saved


def uneven_forgetting(t: dict, facts: dict | None = None) -> list[tuple[str, str]]:
    """Plain words on how each approximate method forgets each race, per scenario and volume:
    (where, what). Which races' forget faces the attack tells apart more (or less) than after exact
    retraining (the race's AUC gap to retraining excludes 0); and whether the method forgets
    *unevenly*: some pair of races whose gaps differ beyond their intervals (Bonferroni over the pairs),
    not merely one race's interval excluding 0 where another's, wider, does not. `facts`, when given,
    receives {(where, method): {"apart": races, "uneven": True/False/None (not judged)}}."""
    from itertools import combinations

    from scipy.stats import norm
    mem = (t.get("forgetting") or {}).get("membership") or {}
    out = []

    def shown(race: str, x: tuple) -> str:
        return f"{race} {100 * x[0]:+.1f} [{100 * x[1]:+.1f}, {100 * x[2]:+.1f}]"
    for key, m in mem.items():
        sc, _, v = key.rpartition(" ")
        where = f"{sc} at {100 * float(v):g}%"
        if m["too_weak"]:
            out.append((where, "no forgetting verdict (the attack cannot tell the original model's forget faces from "
                               "test faces)"))
            continue
        said_ = []
        for name, p in m["models"].items():
            if name in ("original", "retrained"):
                continue
            if p["diverged"]:
                said_.append(f"{name} diverged")
                continue
            g = {race: x for race, x in race_gaps(m, name).items() if x is not None}
            off = {race: x for race, x in g.items() if x[1] > 0 or x[2] < 0}
            text = (f"{name} leaves " + ", ".join(shown(r_, x) for r_, x in off.items()) + " apart from retraining"
                    + (f" ({', '.join(r_ for r_ in g if r_ not in off)} within it)" if len(off) < len(g) else "")
                    if off else f"{name} is within retraining's intervals for every race")
            pairs = list(combinations(g, 2))
            fact = {"apart": {r_: x[0] for r_, x in off.items()}, "uneven": None}
            if facts is not None:
                facts[(where, name)] = fact
            if pairs:
                z = norm.ppf(1 - 0.025 / len(pairs)) / norm.ppf(0.975)
                wide = []
                for a, b in pairs:
                    d = g[a][0] - g[b][0]
                    h = z * np.hypot((g[a][2] - g[a][1]) / 2, (g[b][2] - g[b][1]) / 2)
                    if abs(d) > h:
                        wide.append(f"{a} vs {b} {100 * d:+.1f} [{100 * (d - h):+.1f}, {100 * (d + h):+.1f}]")
                fact["uneven"] = bool(wide)
                text += ("; **uneven across races**: " + ", ".join(wide) if wide else
                         f"; even across races as far as the study can tell (no two races' gaps differ, {len(pairs)} pairs)")
            else:
                text += " (one race forgotten: evenness cannot be judged)"
            said_.append(text)
        out.append((where, "; ".join(said_)))
    return out


def placement_words(t: dict) -> str | None:
    """The study's question in one plain sentence: did placing faces by their likelihood of being
    unlearned change the gap against the reference race, what the study could have detected, and
    whether its calibration holds (A/A, positive control). None without placements."""
    cs = [c for c in comparisons(t, "placement vs uniform") if c.statistic == PRIMARY]
    if not cs:
        return None
    ref = t["reference_race"]
    judged = [c for c in cs if c.outcome != "none"]
    if not judged:
        return "No placement could be judged: a run it needs is degenerate (below)."
    moved = [c for c in judged if c.outcome in ("higher", "lower")]
    if moved:
        first = "; ".join(f"placing by likelihood ({title(c.run)}) {'widened' if c.change > 0 else 'narrowed'} the gap "
                          f"against {ref} by {abs(100 * c.change):.1f} points [{pts(c.ci_low_adjusted)}, "
                          f"{pts(c.ci_high_adjusted)}]" for c in moved)
        first = _capital(first) + "".join(f"; {title(c.run)} did not change it measurably (detectable "
                                          f"±{100 * c.detectable:.1f})" for c in judged if c not in moved)
    else:
        lo, hi = min(c.ci_low_adjusted for c in judged), max(c.ci_high_adjusted for c in judged)
        sizes = sorted(100 * c.detectable for c in judged)
        first = (f"Placing faces by their likelihood of being unlearned did not change the gap against {ref} measurably: "
                 f"every placement's change lies between {pts(lo)} and {pts(hi)} points, and the study would have "
                 f"detected a change of ±{sizes[0]:.1f}" + (f" to ±{sizes[-1]:.1f}" if sizes[-1] > sizes[0] + 0.05 else ""))
    checks = []
    aa_ = [c for c in comparisons(t, "A/A: uniform-b vs uniform") if c.statistic == PRIMARY and c.outcome != "none"]
    if aa_:
        checks.append("its A/A check (two uniform placements) called them different, which a calibrated study does 5% "
                      "of the time: if it recurs (another --seed), its intervals are too narrow"
                      if aa_[0].outcome in ("higher", "lower") else
                      "its A/A check (two uniform placements) came out inconclusive, as it must")
    dr = t.get("dose_response") or {}
    if dr.get("doses"):
        small = dr["smallest_detected"]
        checks.append(f"it detected the positive control from {100 * small:g}% label noise on {ref} training faces"
                      if small is not None else "it detected none of the positive control's doses"
                      if any(d["outcome"] != "none" for d in dr["doses"]) else
                      "its positive control could not be judged (degenerate runs)")
    return first + "".join(f"; {c}" for c in checks) + "."


def who_asks_words(t: dict) -> list[str]:
    """Who asks, in plain words, one sentence per group scenario at the largest volume: did a group's
    requests widen the gap against as many random ones, and, where they did not, why: how much of the
    group's training faces they took, what that did to the group's own accuracy, and what as many random
    requests did to accuracy on all faces (how steep the learning curve is there)."""
    f = t.get("forgetting")
    if not f or "random" not in f["scenarios"]:
        return []
    ref, top = t["reference_race"], max(f["volumes"])
    out = []
    for g in (sc for sc in f["scenarios"] if sc.startswith("group:")):
        ph = f"{g} {top:g}"
        gap = [c for fam in WHO_ASKS
               for c in comparisons(t, fam) if c.phase == ph and c.statistic == PRIMARY and c.outcome != "none"]
        if not gap:
            continue
        _, race, *age = g.split(":")
        share = (f.get("groups") or {}).get(g, {}).get("share_by_volume", {}).get(f"{top:g}")
        lead = (f"Forgetting {100 * top:g}% of the training faces, all of them {race}" + (f" aged {age[0]}" if age else "")
                + f" ({g}" + (f": about {100 * share:.0f}% of that group's training faces" if share else "")
                + "), rather than as many at random,")
        moved = [c for c in gap if c.outcome in ("higher", "lower")]
        still = [c for c in gap if c not in moved]
        words = "; ".join(f"{'widened' if c.change > 0 else 'narrowed'} the gap against {ref} in {title(c.run)} by "
                          f"{abs(100 * c.change):.1f} points [{pts(c.ci_low_adjusted)}, {pts(c.ci_high_adjusted)}]"
                          for c in moved)
        if still:
            words += ("; " if moved else "") + (
                "did not change the gap against " + ref + " measurably in " + _and(
                    f"{title(c.run)} ({pts(c.change)}, detectable ±{100 * c.detectable:.1f})" for c in still))
        sentence = f"{lead} {words}."
        if still:
            own = {c.run: c for fam in (f"{POOLED_TOP}, secondary",
                                        "forgetting: group vs random, secondary")
                   for c in comparisons(t, fam)
                   if c.phase == ph and c.statistic == "accuracy_standardised" and c.outcome != "none"}
            rand = {c.run: c for c in comparisons(t, "forgetting: after vs before, secondary")
                    if c.phase == f"random {top:g}" and c.statistic == "accuracy_overall" and c.outcome != "none"}
            mine = [own[c.run] for c in still if c.run in own]
            if mine:
                sentence += (f" Why: against random requests, {race}'s own age-standardised accuracy changed by "
                             + ", ".join(f"{pts(c.change)} [{pts(c.ci_low_adjusted)}, {pts(c.ci_high_adjusted)}] in "
                                         f"{title(c.run)}" for c in mine))
                curve = [rand[c.run] for c in still if c.run in rand]
                if curve:
                    sentence += (f", while {100 * top:g}% random requests moved accuracy on all faces by "
                                 + ", ".join(f"{pts(c.change)} ({title(c.run)})" for c in curve))
                fell = [c for c in mine if c.outcome == "lower"]
                seen = [c for c in mine if c.outcome == "inconclusive" and c.detectable <= SMALL]
                unseen = [c for c in mine if c.outcome == "inconclusive" and c.detectable > SMALL]
                if fell:
                    sentence += (f"; {race}'s accuracy fell in {_and(title(c.run) for c in fell)}, but the gap's "
                                 "interval there is too wide to tell its change from zero")
                if seen:
                    sentence += (f"; in {_and(title(c.run) for c in seen)} {race}'s accuracy did not fall "
                                 f"measurably (detectable ±{100 * max(c.detectable for c in seen):.1f}): at this scale "
                                 f"it hardly depends on how many {race} faces are trained on, the network's age cues "
                                 "carry over from the other races' faces")
                if unseen:
                    sentence += (f"; in {_and(title(c.run) for c in unseen)} the study cannot tell whether "
                                 f"{race}'s accuracy fell (detectable ±{100 * max(c.detectable for c in unseen):.1f}): "
                                 "it needs more replicates")
                sentence += "."
        out.append(sentence)
    return out


def price_words(t: dict, scenario: str = "likelihood") -> str | None:
    """The seed's question at volume, in one plain sentence: when requests follow the likelihood, do the
    placements make serving them cheaper than uniform SISA (faces x epochs retrained over every step),
    and at what fairness price (each placement's gap against uniform's under the same requests, after
    the largest volume). None without that scenario, uniform and a placement."""
    f = t.get("forgetting")
    if not f or scenario not in f["scenarios"] or "uniform" not in f["configs"]:
        return None
    placed = [tag for tag in f["configs"] if tag not in ("baseline", "uniform")]
    work = {}
    for c in f["costs"]:
        if c["scenario"] == scenario and c["faces_x_epochs"] is not None:
            work[c["config"]] = work.get(c["config"], 0.0) + c["faces_x_epochs"]
    if not placed or not work.get("uniform") or not all(work.get(p) for p in placed):
        return None
    top = max(f["volumes"])
    gap = {c.run: c for c in comparisons(t, "forgetting: placement vs uniform") if c.phase == f"{scenario} {top:g}"
           and c.statistic == PRIMARY}
    vols = ", ".join(f"{100 * v:g}%" for v in f["volumes"])
    first = (f"When requests follow the {scenario} model ({vols} of the training faces, served in steps), "
             + "; ".join(f"{title(p)} retrained {work[p] / work['uniform']:.2f}x the faces x epochs uniform SISA did"
                         for p in placed)
             + (f" (uniform itself {work['uniform'] / work['baseline']:.2f}x the monolith's retraining)"
                if work.get("baseline") else ""))
    price = [f"{title(p)} {said(gap[p])}" for p in placed if p in gap]
    return first + (f"; the gap against {t['reference_race']} after {100 * top:g}%, each placement against uniform "
                    "under the same requests: " + "; ".join(price) if price else "") + "."


def forgetting_words(t: dict) -> tuple[str | None, list[tuple[str, str]]]:
    """(headline, uneven_forgetting's lines): the headline is one sentence over every scenario and
    volume: which methods forget unevenly across races (where that can be judged), and which leave
    forget faces apart from exact retraining everywhere (None without approximate methods)."""
    facts: dict = {}
    lines = uneven_forgetting(t, facts)
    return (forgetting_headline(facts) if facts else None), lines


def forgetting_headline(facts: dict) -> str:
    """The headline of uneven_forgetting's facts (forgetting_words)."""
    methods = list(dict.fromkeys(m for _, m in facts))
    judged = list(dict.fromkeys(w for (w, _), f in facts.items() if f["uneven"] is not None))
    uneven = {m: [w for (w, m_), f in facts.items() if m_ == m and f["uneven"]] for m in methods}
    uneven = {m: ws for m, ws in uneven.items() if ws}
    apart = [m for m in methods if all(f["apart"] for (w, m_), f in facts.items() if m_ == m)]
    first = ("No method forgets unevenly across races where that can be judged (" + ", ".join(judged) + ")"
             if judged and not uneven else
             "Forgetting unevenly across races: " + "; ".join(f"{m} ({', '.join(ws)})" for m, ws in uneven.items())
             if uneven else "Evenness across races could not be judged (each scenario forgets one race)")
    signs = {np.sign(g) for (w, m_), f in facts.items() if m_ in apart for g in f["apart"].values()}
    how = ("more recognisable as members than exact retraining does (under-forgetting)" if signs == {1.0} else
           "less recognisable as members than exact retraining does (over-forgetting)" if signs == {-1.0} else
           "apart from exact retraining (more recognisable for some races, less for others)")
    second = (f"{', '.join(apart)} leave{'s' if len(apart) == 1 else ''} some race's forget faces {how} in every "
              f"scenario and volume judged ({len(facts) // len(methods)})" if apart else
              "no method is apart from exact retraining in every scenario and volume")
    return f"{first}; {second}."


def _and(items) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = list(items)
    return " and ".join(items) if len(items) < 3 else ", ".join(items[:-1]) + " and " + items[-1]


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def summary_lines(r: dict) -> list[str]:
    """RESULTS.md's sentences for a study of replicates (results.summary_section), from report.json."""
    s, out = r["settings"], []
    for test, t in r["tests"].items():
        ref = t["reference_race"]
        placed = comparisons(t, "placement vs uniform")
        out.append(f"- **`{r['study']}`, {test} test ({t['faces']['tested']:,} test faces, {s['replicates']} replicate(s), "
                   f"gaps against {ref}).** " + (f"{placement_words(t)} " if placed else "")
                   + (_capital("; ".join(f"{title(c.run)} versus uniform {said(c)}" for c in placed)) + "." if placed else
                      "No placement was compared with uniform in this study."))
        out += [f"  {sentence}" for sentence in who_asks_words(t)]
        price = price_words(t)
        if price:
            out.append(f"  {price}")
        aa_ = comparisons(t, "A/A: uniform-b vs uniform")
        if aa_:
            out.append(f"  A/A (two uniform placements): {said(aa_[0])}"
                       + (f", called different in {t['aa']['false_positives']} of {t['aa']['replicates']} replicate(s) "
                          "judged alone." if t.get("aa") else "."))
        dr = t.get("dose_response") or {}
        if dr.get("doses"):
            small = dr["smallest_detected"]
            out.append("  Positive control by dose: " + "; ".join(
                f"{100 * d['dose']:g}% {pts(d['change'])} ({d['outcome']})" for d in dr["doses"])
                + f"; smallest dose detected: {'none' if small is None else f'{100 * small:g}%'}.")
        base, uni = level(t, "baseline", "accuracy_overall"), level(t, "uniform", "accuracy_overall")
        if base and uni:
            out.append(f"  Accuracy on all faces: baseline {lv(base)}%, uniform {lv(uni)}%.")
        f = t.get("forgetting")
        if f:
            top = max(f["volumes"])
            for fams, lead in ((WHO_ASKS,
                                f"Who asks, at {100 * top:g}% (a group against as many random requests)"),
                               (("forgetting: after vs before",), f"After forgetting {100 * top:g}%, against before")):
                cs = [c for fam in fams for c in comparisons(t, fam) if c.phase.endswith(f" {top:g}") and
                      c.statistic == PRIMARY]
                if cs:
                    out.append(f"  {lead}: " + "; ".join(f"{labelled(c.run, c.phase)} {said(c)}" for c in cs) + ".")
        head, lines = forgetting_words(t)
        if head:
            out.append(f"  **Approximate unlearning, forgetting by race** (the membership attack on forget faces, each "
                       f"method against exact retraining): {head}")
        for where, what in lines:
            out.append(f"  Forgetting by race, {where} (forget-face AUC minus retraining's, x100): {what}.")
    return out
