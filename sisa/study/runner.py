"""A study's runs, phase by phase: open the study folder, prepare the runs, train, evaluate, unlearn,
evaluate again, and write the report; or only say what that would do (--dry_run), or only render the
report from finished runs (--report_only).

A phase is done when its outputs are there, not when a record says so (Study.pending):
  train                      every slice checkpoint has its record in the run folder
  evaluate                   the run's summary is in --summaries_dir
  unlearning                 the fold's first --sample faces of its request order are forgotten, verified
  evaluate after unlearning  the summary of the run as it is now (<run>-unlearned<N>) is there
  forget <scenario>          for every --forget volume, the summary <run>-<scenario>-forget<pct> is there;
                             its run, a clone of the trained run made before the run serves anything,
                             forgets each volume on top of the last (one retraining per shard a step),
                             is verified and evaluated; each step's seconds and cost are in the
                             clone's progress record as phase "forget <volume>"
so another --checkpoints_dir or --summaries_dir redoes what is missing there, never ends in a traceback.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import time
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import SisaError
from ..experiment import Options, clone_run
from ..layout import DEFAULT_REPORTS, DEFAULT_SUMMARIES, RunLayout, StudyLayout, SummaryLayout
from ..device import wants_cuda
from ..store import new_run_lock, read_json, run_lock, write_json
from .launch import SlurmOptions, choose_jobs, failure_line, make_launcher, reattach
from .progress import Progress
from .settings import Settings

POLL_SECONDS = 2.0      # how often the study looks at its jobs' records


class Study:
    def __init__(self, settings: Settings, opts: Options, summaries_dir: Path = DEFAULT_SUMMARIES,
                 reports_dir: Path = DEFAULT_REPORTS, overwrite: bool = False, say=print):
        self.s, self.opts = settings, opts
        self.summaries = Path(summaries_dir).resolve()
        self.layout = StudyLayout((Path(reports_dir) / settings.name).resolve())
        self.overwrite, self.say = overwrite, say
        self._unlearning_units: dict = {}
        self._keys = {settings.run_name(*key): key for key in settings.runs()}    # run name -> (test, tag, replicate)

    # -- the study folder ---------------------------------------------------------------------
    def check_folder(self) -> Settings | None:
        """The settings the study folder holds (None: a new study), or a one-line error when they are
        another study's run settings and there is no --overwrite. Writes nothing."""
        L = self.layout
        if L.settings.exists():
            old = Settings.from_dict(read_json(L.settings), fallback=self.s)
            changed = self.s.run_changes(old)
            if changed and not self.overwrite:
                raise SisaError(f"study folder {L.root} holds another study ({'; '.join(changed)}): these settings "
                                "change every run; pass --overwrite to delete its runs and train them again, or --name "
                                "for a separate study")
            return old
        if L.root.exists() and any(p.name != "LOCK" for p in L.root.iterdir()) and not self.overwrite:
            raise SisaError(f"{L.root} exists but is not a study folder (no study.json); move it away or pass "
                            "--overwrite")
        return None

    def open(self) -> Progress:
        """Create the study folder, or re-open it: runs of the same run settings are reused whatever
        the seeds, configurations or bootstrap asked for now."""
        L = self.layout
        old = self.check_folder()
        if old is not None and self.s.run_changes(old):
            self._clear(old)
        elif old is None and L.root.exists():
            self._clear(None)
        elif old is not None and self.s.other_changes(old):
            self.say(f"study {self.s.name}: {'; '.join(self.s.other_changes(old))}; finished runs are reused")
        L.root.mkdir(parents=True, exist_ok=True)
        write_json(L.settings, {**self.s.to_dict(), "checkpoints_dir": str(Path(self.opts.checkpoints_dir).resolve()),
                                "summaries_dir": str(self.summaries)})
        return Progress.load(L)

    def _clear(self, old: Settings | None) -> None:
        """--overwrite: remove the study folder's contents and the old study's run folders."""
        for p in self.layout.root.iterdir():
            if p.name != "LOCK":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        if old is not None:
            for test, tag, k in old.runs():
                names = [old.run_name(test, tag, k)] + [old.scenario_run(test, tag, k, sc) for sc in old.scenarios
                                                        if tag in old.scenario_configs]
                for run in (Path(self.opts.checkpoints_dir) / n for n in names):
                    if (run / "config.json").exists():
                        shutil.rmtree(run)

    # -- what is left -------------------------------------------------------------------------
    def sisa(self, exp) -> bool:
        return exp.cfg.num_shards * exp.cfg.num_slices > 1

    def requests(self, exp) -> dict[int, list[str]]:
        """{fold: the faces of its first --sample requests not yet forgotten} (empty: all served)."""
        from ..unlearning import request_order
        if not self.sisa(exp) or not self.s.sample:
            return {}
        plan = {}
        for f, p in enumerate(exp.partitions):
            forgotten = set(p.loc[p["forgotten"], "filename"])
            todo = [x for x in request_order(p, exp.cfg.seed, f)[:self.s.sample] if x not in forgotten]
            if todo:
                plan[f] = todo
        return plan

    def pending(self, exp, progress: Progress) -> list[str]:
        """The phases of a run whose outputs are missing here (see the module docstring)."""
        from ..evaluation import summary_name
        from ..training import pending_stages
        name, todo = exp.cfg.name, []
        if any(first < exp.cfg.num_slices for _, _, first in pending_stages(exp, verify=False)):
            todo.append("train")
        if not self.summary_here(name):
            todo.append("evaluate")
        if self.sisa(exp) and self.s.sample:
            if self.requests(exp) or not progress.finished(name, "unlearning"):
                todo.append("unlearning")
            if todo[-1:] == ["unlearning"] or not self.summary_here(summary_name(exp)):
                todo.append("evaluate after unlearning")
        todo += [f"forget {sc}" for sc, clone in self.scenarios_of(exp) if self.volumes_left(exp, clone)]
        if self.methods_left(exp):
            todo.append("approximate")
        return todo

    def scenarios_of(self, exp) -> list[tuple[str, RunLayout]]:
        """(scenario, its clone's layout) for every --scenarios entry this run serves."""
        key = self._keys.get(exp.cfg.name)
        if key is None or key[1] not in self.s.scenario_configs:
            return []
        return [(sc, RunLayout((Path(self.opts.checkpoints_dir) / self.s.scenario_run(*key, sc)).resolve()))
                for sc in self.s.scenarios]

    def volumes_left(self, exp, clone: RunLayout) -> list[float]:
        """The volumes whose summary (and, for the baseline of a study with --methods, the retrained
        model's features for the attack) is not in --summaries_dir."""
        feats = bool(self.s.methods) and self._keys[exp.cfg.name][1] == "baseline"
        return [v for v in sorted(self.s.forget) if not self.summary_here(self.s.volume_summary(clone.name, v))
                or (feats and not SummaryLayout(self.summaries, self.s.volume_summary(clone.name, v)).features.exists())]

    def methods_left(self, exp) -> list[tuple[str, float, str]]:
        """(scenario, volume, method) whose summary or features are missing, for the baseline run."""
        key = self._keys.get(exp.cfg.name)
        if not self.s.methods or key is None or key[1] != "baseline":
            return []
        return [(sc, v, m) for sc in self.s.scenarios for v in sorted(self.s.forget) for m in self.s.methods
                if not SummaryLayout(self.summaries, self.s.method_summary(key[0], key[2], sc, m, v)).features.exists()]

    def summary_here(self, summary: str) -> bool:
        """Whether a summary (<run>, or <run>-unlearned<N> after requests) is in --summaries_dir."""
        return SummaryLayout(self.summaries, summary).predictions.exists()

    def work(self, progress: Progress, exp, todo: list[str] | None = None) -> int:
        """Images (training-step equivalents) this run still needs: training, evaluation and unlearning."""
        from ..training import pending_stages, stage_work
        todo = self.pending(exp, progress) if todo is None else todo
        cfg = exp.cfg
        # the records, not the files: hashing every checkpoint only to size a bar cost minutes on a GPU study
        left = sum(stage_work(exp, f, s, first) for f, s, first in pending_stages(exp, verify=False))
        tested = sum(int((p["role"] == "test").sum()) for p in exp.partitions)
        left += self.eval_units(cfg, tested) * ("evaluate" in todo)
        if "evaluate after unlearning" in todo:   # only the retrained shards run again
            left += self.eval_units(cfg, tested) * min(cfg.num_shards, self.s.sample) // cfg.num_shards
        if "unlearning" in todo:
            left += self.unlearning_units(exp)
        for sc, clone in self.scenarios_of(exp):
            if f"forget {sc}" in todo:
                left += sum(self.volume_units(exp, sc, v) + self.eval_units(cfg, tested) for v in self.volumes_left(exp, clone))
        if "approximate" in todo:      # each method: a tenth of retraining, then every face through the model
            train = sum(int((p["role"] == "train").sum()) for p in exp.partitions)
            left += len(self.methods_left(exp)) * (train * cfg.epochs // 10 + (train + tested) // 3)
            left += self.tuning_units(exp)
        return left

    def tuning_units(self, exp) -> int:
        """Faces x epochs of choosing the methods' learning rates on this baseline (tuning.py): the
        tuning original, then per scenario still to tune its target and every candidate."""
        from .. import tuning
        from ..store import read_json
        path = self.layout.tuning(exp.cfg.name)
        todo = tuning.missing(read_json(path) if path.exists() else None, self.s.scenarios, self.s.methods)
        if not todo:
            return 0
        a = int((exp.partitions[0]["role"] == "train").sum() * (1 - tuning.VALIDATION_SHARE)) * exp.cfg.epochs
        scen = {sc for sc, _ in todo}
        return a + len(scen) * a + len(todo) * len(tuning.GRID) * a // 10

    def volume_units(self, exp, scenario: str, volume: float) -> int:
        """Faces x epochs of forgetting one volume on top of the last (exact, from the partitions)."""
        from .. import scenarios
        from ..unlearning import set_cost
        key = (exp.cfg.name, scenario, volume)
        if key not in self._unlearning_units:
            sc, vols = scenarios.parse(scenario), sorted(self.s.forget)
            smaller = [v for v in vols if v < volume]
            total = 0
            for f, p in enumerate(exp.partitions):
                prev = smaller[-1] if smaller else None
                p = p.assign(forgotten=False)
                if prev is not None:         # priced on top of the smaller volume, as it will be served
                    p.loc[p["filename"].isin(scenarios.forget_set(p, sc, prev, exp.cfg.seed, f)), "forgotten"] = True
                total += set_cost(p, exp.cfg, scenarios.step(p, sc, prev, volume, exp.cfg.seed, f))["faces_x_epochs"]
            self._unlearning_units[key] = total
        return self._unlearning_units[key]

    @staticmethod
    def eval_units(cfg, tested: int) -> int:
        return tested * cfg.num_shards * 2 // 3     # forward passes (faces x shards x 2 for the mirror) ~ 1/3 step

    def unlearning_units(self, exp) -> int:
        from ..unlearning import expected_cost
        name = exp.cfg.name
        if name not in self._unlearning_units:      # asked at every look at running jobs: computed once
            self._unlearning_units[name] = int(sum(expected_cost(p, exp.cfg)["expected_faces_x_epochs"]
                                                   for p in exp.partitions) * self.s.sample)
        return self._unlearning_units[name]

    def check_requests(self, exps: dict) -> None:
        """--sample larger than a fold's training faces, or a --forget volume a scenario cannot supply:
        say so before anything is trained."""
        from .. import scenarios
        for exp in exps.values():
            for sc, _ in self.scenarios_of(exp):
                for f, p in enumerate(exp.partitions):
                    scenarios.forget_set(p, scenarios.parse(sc), max(self.s.forget), exp.cfg.seed, f)
            if self.sisa(exp) and self.s.sample:
                train = min(int((p["role"] == "train").sum()) for p in exp.partitions)
                if self.s.sample > train:
                    raise SisaError(f"--sample {self.s.sample} is more than the {train} training faces of a fold of "
                                    f"{exp.cfg.name}; lower --sample (at most {train}) or raise --limit")

    # -- before anything runs -----------------------------------------------------------------
    def estimate(self) -> dict:
        """Each run's state and images still to process, the total and an estimated time, from the
        run folders as they are (a new run planned in memory): nothing is written, no image decoded."""
        from ..config import RunConfig
        from ..experiment import open_run, plan
        from .estimate import measured_rate, probe_rate
        old = self.check_folder()                    # the one-line error the study itself would give
        replaced = old is not None and bool(self.s.run_changes(old))
        progress = Progress.load(self.layout) if old is not None and not replaced else Progress(self.layout)
        runs, exps, exact = [], {}, True
        for key in self.s.runs():
            cfg = self.s.run_config(*key)
            layout = RunLayout((Path(self.opts.checkpoints_dir) / cfg.name).resolve())
            state = "resume" if layout.exists() and not replaced else "new"
            if state == "resume" and RunConfig.from_dict(read_json(layout.config)) != cfg:
                if not self.overwrite:
                    raise SisaError(f"run folder {layout.root} holds another configuration "
                                    f"({'; '.join(RunConfig.from_dict(read_json(layout.config)).differences(cfg))}); "
                                    "pass --overwrite to replace it, or --name for a separate study")
                state = "replace"
            if state == "resume":
                exp = open_run(layout, self.opts, with_images=False)
                todo = self.pending(exp, progress)
                units = self.work(progress, exp, todo)
            else:
                exp, known = plan(cfg, self.opts)
                exact &= known
                todo = ["every phase"]
                units = self.work(Progress(self.layout), exp)
            exps[key] = exp
            runs.append({"run": cfg.name, "state": state if todo else "done", "left": todo, "images": units})
        self.check_requests(exps)
        rate, source = measured_rate(progress.done), "this study's finished training"
        if rate is None:
            rate = probe_rate(self.s.model, self.s.image_size, self.s.batch_size, self.opts.device, self.opts.precision)
            source = f"a few steps of {self.s.model} at {self.s.image_size} px on this machine"
        images = sum(r["images"] for r in runs)
        return {"runs": runs, "images": images, "images_per_s": rate, "rate_from": source,
                "seconds": images / rate, "exact": exact}

    def dry_run(self) -> dict:
        """Print what the study would do and how long it would take; writes nothing."""
        from .estimate import duration
        e = self.estimate()
        width = max(len(r["run"]) for r in e["runs"])
        self.say(f"study {self.s.name}, dry run (nothing written): {self.layout.root}")
        for r in e["runs"]:
            self.say(f"  {r['run']:<{width}}  {r['state']:<7}  {r['images']:>12,} images  "
                     f"{', '.join(r['left']) or 'nothing left'}")
        self.say(f"{e['images']:,} images to train, evaluate and retrain (training-step equivalents) at "
                 f"{e['images_per_s']:,.0f} images/s ({e['rate_from']}): {duration(e['seconds'])}"
                 + ("" if e["exact"] else "; faces counted from file names (no image cache yet)"))
        return e

    # -- running ------------------------------------------------------------------------------
    def run(self, jobs: int | None = 1, launcher: str = "local", no_wait: bool = False,
            slurm: SlurmOptions = SlurmOptions()) -> Path | None:
        """Every unfinished phase of every run, then the report (None: --no_wait submitted jobs).

        `jobs` 1 with the local launcher: one run after another in this process; otherwise each run
        is a job (launch.py) and this process watches them; None chooses from cores and memory."""
        started = time.perf_counter()
        with run_lock(self.layout.lock, "study.py"):
            progress = self.open()
            before = progress.seconds()            # phases of earlier invocations
            exps = self.prepare_all()
            self.check_requests(exps)
            left = {key: exp for key, exp in exps.items() if self.pending(exp, progress)}
            n, threads, why = 1, 0, ""
            if launcher == "slurm":            # every run submitted at once; Slurm schedules them
                n, threads = len(left), slurm.cpus_per_job
                why = f"Slurm schedules them; --cpus_per_job {slurm.cpus_per_job}"
            elif left:
                n, threads, why = choose_jobs(jobs, len(left), next(iter(left.values())).images.nbytes,
                                              wants_cuda(self.opts.device))
            if left and (launcher != "local" or n > 1):     # else: one run after another, in this process
                self.say(f"{len(left)} run(s) to go: {n} at a time ({launcher} launcher, {why}), "
                         f"{threads} torch thread(s) each; logs in {self.layout.run_log('<run>')}")
                failures = self.launch(left, progress, n, threads, launcher, no_wait, slurm)
                if failures is None:
                    return None
                progress = Progress.load(self.layout)
                if failures:
                    raise SisaError(f"{len(failures)} of {len(left)} run(s) failed: " + "; ".join(failures) +
                                    ". The other runs are kept; rerun the same command to retry the failed ones")
            else:
                with self.bar(sum(self.work(progress, e) for e in exps.values())) as bar:
                    self.say = bar.write
                    for key, exp in exps.items():
                        self.one_run(key, exp, progress, bar)
            # the study's time: the phases of earlier invocations (interrupted attempts included) plus
            # this one's wall time (its phases, run here or as jobs, preparing runs and the report)
            return self.report(Progress.load(self.layout), before + time.perf_counter() - started)

    def report(self, progress: Progress, seconds_total: float) -> Path:
        from .report import write_report
        t = time.perf_counter()
        path = write_report(self.layout, self.s, self.opts, self.summaries, progress.done,
                            seconds_total=seconds_total)
        self.say(f"[{self.clock()}] report: {self.layout.report_md} ({time.perf_counter() - t:.0f} s)")
        return path

    def report_only(self) -> Path:
        """The report rendered again from finished runs (another --n_boot, say); trains nothing."""
        from ..experiment import open_run
        if not self.layout.settings.exists():
            raise SisaError(f"{self.layout.root} holds no study yet; run study.py without --report_only first")
        with run_lock(self.layout.lock, "study.py"):
            old = self.check_folder()        # nothing is written until every run it needs is known to be finished
            if old is not None and self.s.run_changes(old):
                raise SisaError(f"--report_only renders the runs there are, but these settings would change every run "
                                f"({'; '.join(self.s.run_changes(old))}); give the study's own settings (its study.json)")
            progress = Progress.load(self.layout)
            unfinished = []
            for key in self.s.runs():
                layout = RunLayout((Path(self.opts.checkpoints_dir) / self.s.run_name(*key)).resolve())
                todo = self.pending(open_run(layout, self.opts, with_images=False), progress) \
                    if layout.exists() else ["every phase"]
                if todo:
                    unfinished.append(f"{layout.name} ({', '.join(todo)})")
            if unfinished:
                raise SisaError(f"--report_only: {len(unfinished)} run(s) unfinished, first {unfinished[0]}; run "
                                "study.py without --report_only to finish them")
            progress = self.open()
            return self.report(progress, progress.seconds())

    def launch(self, left: dict, progress: Progress, jobs: int, threads: int, launcher: str, no_wait: bool,
               slurm: SlurmOptions) -> list[str] | None:
        """Run `left` as jobs, `jobs` at a time (Slurm: all submitted, Slurm schedules them), and watch
        them with one progress bar driven by the runs' records. Returns one line per failed run, or
        None when --no_wait left submitted jobs running."""
        from .jobs import Job, run_job
        folder = self.layout.launcher_dir
        recorded = read_json(self.layout.jobs) if self.layout.jobs.exists() else {}
        runner = make_launcher(launcher, folder, slurm)
        specs = {key: Job(self.s.to_dict(), key, self.opts, self.summaries, self.layout.root.parent, threads,
                          self.layout.run_log(exp.cfg.name), exp.cfg.name) for key, exp in left.items()}
        queue, handles, failures = list(left), {}, []
        at_once = len(queue) if launcher == "slurm" else jobs

        def submit_more() -> None:
            while queue and len(handles) < at_once:
                key = queue.pop(0)
                name = specs[key].name
                again = reattach(launcher, folder, recorded.get(name, {}).get("job_id"))
                handles[key] = again or runner.submit(run_job, specs[key])
                recorded[name] = {"launcher": launcher, "job_id": getattr(handles[key], "job_id", None),
                                  "log": str(specs[key].log), "reattached": again is not None}
            write_json(self.layout.jobs, recorded)

        units = {key: self.work(progress, exp) for key, exp in left.items()}
        try:
            submit_more()
            if no_wait:
                self.say(f"submitted {len(handles)} job(s) ({self.layout.jobs}); rerun the same command to "
                         "collect them and write the report")
                return None
            with self.bar(sum(units.values())) as bar:
                while handles:
                    time.sleep(POLL_SECONDS)
                    for key in [k for k, h in handles.items() if h.done()]:
                        line = failure_line(handles.pop(key), specs[key].name, specs[key].log)
                        if line:
                            failures.append(line)
                        bar.write(f"[{self.clock()}] " + (f"failed: {line}" if line else f"finished {specs[key].name}"))
                    submit_more()
                    now = Progress.load(self.layout)
                    left_now = sum(units[key] if key in queue else min(units[key], self.work(now, left[key]))
                                   if key in handles else 0 for key in left)
                    bar.n = max(bar.n, sum(units.values()) - left_now)   # a run's unlearning makes its partition
                    bar.refresh()                                        # newer than ours: never count backwards
            return failures
        finally:
            runner.close()

    def run_one(self, key: tuple, log) -> None:
        """A job's work (jobs.run_job): one run's unfinished phases, progress to `log`."""
        exp = self.prepare_run(key)
        progress = Progress.load(self.layout)
        with tqdm(total=self.work(progress, exp), unit="img", unit_scale=True, desc=exp.cfg.name, file=log,
                  mininterval=30, ascii=True, disable=not self.opts.progress) as bar:
            self.say = bar.write
            self.one_run(key, exp, progress, bar)

    def clock(self) -> str:
        return dt.datetime.now().strftime("%H:%M:%S")

    def prepare_all(self) -> dict:
        """Every run folder created or re-opened (faces, likelihood, partitions), in training order."""
        return {key: self.prepare_run(key, self.overwrite) for key in self.s.runs()}

    def prepare_run(self, key: tuple, overwrite: bool = False):
        """One run folder created or re-opened under its lock, an unlearning commit a crash left
        finished first; `overwrite` replaces a folder of another configuration."""
        from ..commit import finish_and_report
        from ..experiment import prepare

        cfg = self.s.run_config(*key)
        layout = RunLayout((Path(self.opts.checkpoints_dir) / cfg.name).resolve())
        with new_run_lock(layout.root, "study.py"):     # a run folder that fails to be made is not left behind
            if layout.exists():
                finish_and_report(layout, self.say)
            return prepare(cfg, dataclasses.replace(self.opts, overwrite=overwrite))

    def bar(self, total: int, **kw) -> tqdm:
        """The study's progress bar: images to train, evaluate and retrain, with an ETA."""
        return tqdm(total=total, unit="img", unit_scale=True, desc=f"study {self.s.name}",
                    disable=not self.opts.progress, dynamic_ncols=True, **kw)

    def one_run(self, key: tuple, exp, progress: Progress, bar) -> None:
        """Every phase of one run whose outputs are missing, under the run's lock."""
        from ..commit import finish_and_report
        from ..evaluation import evaluate_run, summary_name
        from ..experiment import open_run
        from ..training import resolve_weights, train_run
        from ..unlearning import serve_plan, verify

        cfg, name, L = exp.cfg, exp.cfg.name, exp.layout
        with run_lock(L.lock, "study.py"):
            finish_and_report(L, bar.write)
            # the partitions as they are now, inside the lock (another process may have served requests)
            exp = dataclasses.replace(exp, partitions=open_run(L, self.opts, with_images=False).partitions)
            todo = self.pending(exp, progress)
            tested = sum(int((p["role"] == "test").sum()) for p in exp.partitions)
            if "train" in todo:
                with progress.phase(name, "train") as facts:
                    facts["run_dir"] = str(L.root)
                    resolve_weights(exp)
                    train_run(exp, self.opts, bar=bar)
                    facts["images_per_s"] = throughput(L, cfg.n_folds)
                self.say(f"[{self.clock()}] trained {name} ({cfg.n_folds} fold(s) x {cfg.num_shards} x {cfg.num_slices}) "
                         f"in {fmt_s(progress.fact(name, 'train', 'seconds'))}")
            if "evaluate" in todo:
                if any(p["forgotten"].any() for p in exp.partitions):
                    was = progress.fact(name, "evaluate", "summaries_dir")
                    raise SisaError(f"run {name} has served requests, so its summary before unlearning cannot be made "
                                    f"again and it is not in {self.summaries}; pass the --summaries_dir it was written "
                                    f"to{f' ({was})' if was else ''}, or --overwrite to train the study again")
                with progress.phase(name, "evaluate") as facts:
                    out, _ = evaluate_run(L, self.opts, self.summaries, overwrite=True, name=name, n_boot=self.s.n_boot)
                    facts.update(summary=out.name, summaries_dir=str(self.summaries))
                bar.update(self.eval_units(cfg, tested))
                self.say(f"[{self.clock()}] evaluated {name} in {fmt_s(progress.fact(name, 'evaluate', 'seconds'))}")
            for sc, clone in self.scenarios_of(exp):        # before the run itself forgets anything
                if f"forget {sc}" in todo and not clone.exists():
                    clone_run(L, clone)
            if "unlearning" in todo:
                with progress.phase(name, "unlearning") as facts:
                    plan = self.requests(exp)
                    served = [r for _, _, r in serve_plan(L, self.opts, plan, bar=bar)] if plan else []
                    exp = open_run(L, self.opts, with_images=False)
                    checks = verify(exp)
                    bad = [r for r in checks if not r["ok"]]
                    facts.update(requests=int(sum(p["forgotten"].sum() for p in exp.partitions)),
                                 served_now=len(served), verified=not bad, shards_checked=len(checks))
                    if bad:
                        raise SisaError(f"run {name} fails verification after unlearning ({bad[0]['detail']}); "
                                        "retrain it with train.py and rerun the study")
                self.say(f"[{self.clock()}] {name}: served and verified {self.s.sample} request(s) per fold in "
                         f"{fmt_s(progress.fact(name, 'unlearning', 'seconds'))}")
            if "evaluate after unlearning" in todo:
                after = summary_name(exp)
                with progress.phase(name, "evaluate after unlearning") as facts:
                    evaluate_run(L, self.opts, self.summaries, overwrite=True, name=after, n_boot=self.s.n_boot)
                    facts.update(summary=after, summaries_dir=str(self.summaries))
                bar.update(self.eval_units(cfg, tested) * min(cfg.num_shards, self.s.sample) // cfg.num_shards)
                self.say(f"[{self.clock()}] evaluated {after} in "
                         f"{fmt_s(progress.fact(name, 'evaluate after unlearning', 'seconds'))}")
        for sc, clone in self.scenarios_of(exp):
            if f"forget {sc}" in todo:
                self.forget(exp, sc, clone, progress, bar)
        if "approximate" in todo:
            self.approximate(exp, progress, bar)

    def approximate(self, exp, progress: Progress, bar) -> None:
        """Every --methods entry applied to the baseline's trained models for every scenario and volume
        (approximate.unlearn_run), and the original models' features for the attack."""
        from ..approximate import run_features, unlearn_run
        from ..tuning import chosen
        from ..experiment import open_run
        from ..training import Trainer
        full = open_run(exp.layout, self.opts, with_images=True)
        trainer = Trainer(full, self.opts)
        original = SummaryLayout(self.summaries, exp.cfg.name)
        if not original.features.exists():
            run_features(full, trainer, original)
        train = sum(int((p["role"] == "train").sum()) for p in exp.partitions)
        tested = sum(int((p["role"] == "test").sum()) for p in exp.partitions)
        left = self.methods_left(exp)
        if left:
            units = self.tuning_units(exp)
            tuned = self.tuning(full, trainer, progress)
            bar.update(units)
        for sc, v, m in left:
            test, _, r = self._keys[exp.cfg.name]
            summary = SummaryLayout(self.summaries, self.s.method_summary(test, r, sc, m, v))
            with progress.phase(summary.name, "approximate") as facts:
                facts.update(unlearn_run(full, trainer, sc, v, chosen(tuned, sc, m, exp.cfg.batch_size), summary,
                                         full.cfg.seed))
            bar.update(train * exp.cfg.epochs // 10 + (train + tested) // 3)
            self.say(f"[{self.clock()}] {summary.name}: {m} forgot {sc} at {v:g} "
                     f"({'DIVERGED, ' if facts['diverged'] else ''}{facts['image_steps']:,} image-steps) in "
                     f"{fmt_s(progress.fact(summary.name, 'approximate', 'seconds'))}")

    def tuning(self, full, trainer, progress: Progress) -> dict:
        """The methods' learning rates for this baseline run, chosen on its fold 0's training faces
        (tuning.py): read from tuning/<run>.json, or computed for what it lacks at the volume it
        recorded (the study's largest when first tuned) and saved before any method runs."""
        from ..store import read_json, write_json
        from .. import tuning
        path = self.layout.tuning(full.cfg.name)
        have = read_json(path) if path.exists() else None
        todo = tuning.missing(have, self.s.scenarios, self.s.methods)
        if not todo:
            return have
        volume = have["volume"] if have else max(self.s.forget)
        with progress.phase(f"{full.cfg.name}-tuning", "tune") as facts:
            new = tuning.tune(full, trainer, sorted({s for s, _ in todo}), volume, sorted({m for _, m in todo}),
                              full.cfg.seed, self.layout.tuning_metrics(full.cfg.name),
                              say=lambda line: self.say(f"[{self.clock()}] {full.cfg.name} {line}"))
            facts["seconds_tuning"] = new["seconds"]
        if have:
            for sc, entry in new["scenarios"].items():
                have["scenarios"].setdefault(sc, {**entry, "methods": {}})["methods"].update(entry["methods"])
            have["seconds"] = have.get("seconds", 0) + new["seconds"]
            new = have
        write_json(path, new)
        return new

    def forget(self, exp, scenario: str, clone: RunLayout, progress: Progress, bar) -> None:
        """Serve a scenario's volumes on its clone of the run, smallest first, each on top of the last:
        every shard holding a face of the step retrains once (the 1x1 baseline: from scratch), the
        clone is verified and evaluated into <clone>-forget<pct>."""
        from .. import scenarios
        from ..commit import finish_and_report
        from ..evaluation import evaluate_run
        from ..experiment import open_run
        from ..store import read_jsonl
        from ..unlearning import serve_plan, verify

        sc, cfg = scenarios.parse(scenario), exp.cfg
        tested = sum(int((p["role"] == "test").sum()) for p in exp.partitions)
        with run_lock(clone.lock, "study.py"):
            finish_and_report(clone, bar.write)
            for v in self.volumes_left(exp, clone):
                cexp = open_run(clone, self.opts, with_images=False)
                seed = cexp.cfg.seed
                try:
                    plan = {f: scenarios.next_step(p, sc, v, seed, f) for f, p in enumerate(cexp.partitions)}
                except SisaError:
                    raise SisaError(f"run {clone.name} has forgotten more than {scenario} at {v:g} (a smaller volume "
                                    f"asked for after a larger one was served); delete {clone.root} and rerun to serve "
                                    "every volume again from the trained run") from None
                summary = self.s.volume_summary(clone.name, v)
                with progress.phase(clone.name, f"forget {v:g}") as facts:
                    if any(plan.values()):
                        for _ in serve_plan(clone, self.opts, plan, batched=True, bar=bar):
                            pass
                    cexp = open_run(clone, self.opts, with_images=False)
                    bad = [r for r in verify(cexp) if not r["ok"]]
                    if bad:
                        raise SisaError(f"run {clone.name} fails verification after forgetting ({bad[0]['detail']}); "
                                        f"delete {clone.root} and rerun")
                    t = time.perf_counter()
                    evaluate_run(clone, self.opts, self.summaries, overwrite=True, name=summary, n_boot=self.s.n_boot)
                    if self.s.methods and self._keys[exp.cfg.name][1] == "baseline":   # the exact target's features
                        from ..approximate import run_features
                        from ..training import Trainer
                        full = open_run(clone, self.opts, with_images=True)
                        run_features(full, Trainer(full, self.opts), SummaryLayout(self.summaries, summary))
                    # the step's cost from the log (a step resumed after a crash counts what it served before)
                    prev = max([u for u in self.s.forget if u < v], default=None)
                    step = {(f, x) for f, p in enumerate(cexp.partitions) for x in scenarios.step(p, sc, prev, v, seed, f)}
                    recs = [r for r in read_jsonl(clone.unlearning_log) if (r["fold"], r["face"]) in step]
                    facts.update(scenario=scenario, volume=v, summary=summary, summaries_dir=str(self.summaries),
                                 forgotten=int(sum(p["forgotten"].sum() for p in cexp.partitions)), verified=True,
                                 faces_served=len(recs), faces_x_epochs=sum(r["faces_x_epochs"] for r in recs),
                                 shard_models_retrained=len({(r["fold"], r["shard"]) for r in recs}),
                                 baseline_faces_x_epochs=sum(r["baseline_faces_x_epochs"] for r in recs),
                                 full_faces_x_epochs=sum(r["full_faces_x_epochs"] for r in recs),
                                 serve_seconds=sum(r["wall_seconds"] for r in recs),
                                 evaluate_seconds=time.perf_counter() - t)
                bar.update(self.eval_units(cfg, tested))
                self.say(f"[{self.clock()}] {clone.name}: forgot {scenario} at {v:g} ({facts['faces_served']:,} more "
                         f"faces, {facts['shard_models_retrained']} shard model(s) retrained over {cfg.n_folds} fold(s)), verified "
                         f"and evaluated in {fmt_s(progress.fact(clone.name, f'forget {v:g}', 'seconds'))}")


def throughput(layout: RunLayout, folds: int) -> float:
    """Training images per second over every epoch of a run's folds."""
    from ..store import read_jsonl
    recs = [r for f in range(folds) for r in read_jsonl(layout.metrics(f))]
    secs = sum(r["seconds"] for r in recs)
    return sum(r["faces"] for r in recs) / secs if secs else float("nan")


def fmt_s(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"
