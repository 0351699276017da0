"""Where a study's runs execute: side by side as local processes, or as Slurm jobs through submitit.

    .venv/bin/python study.py --jobs 4                         # four runs at once, threads split between them (auto: one per 2 cores)
    .venv/bin/python study.py --jobs 1                         # one run at a time, in this process
    .venv/bin/python study.py --launcher slurm --slurm_partition gpu --gpus_per_job 1 --time_min 240
    .venv/bin/python study.py --launcher slurm --no_wait       # submit and return; the same command again collects

A study's runs are independent, so a run is one job: all its phases (train, evaluate, unlearn,
evaluate again) in its own run folder, under that folder's lock, writing its own progress file
(reports/<study>/progress/<run>.json) and log (reports/<study>/logs/<run>.log). A job is an ordinary
run folder, so resume and the report do not care where it ran. The study process watches the records
(checkpoint records and progress files, never the checkpoints themselves) for one progress bar, and
writes the report once every run is done. A finished run is never redone; a failed job is named with
its log and the study carries on with the others; rerunning the study retries it.

Launchers (one small interface: `submit(fn, arg) -> handle` with `done()`, `exception()`, `job_id`;
the study submits `study.run_job` with a `study.Job`):
  local           concurrent.futures processes on this machine (spawned, one per run, then gone),
                  --jobs at a time
  slurm           one Slurm job per run, through submitit (a maintained engine, not a scheduler of ours):
                  every run is submitted at once and Slurm schedules them (--jobs does not apply)
  submitit-local  submitit's local executor: the Slurm path run on this machine, --jobs at a time
                  (tests, a trial before a cluster)
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import SisaError, first_line

LAUNCHERS = ("local", "slurm", "submitit-local")
GB = 1024 ** 3
PROCESS_OVERHEAD = 1.5 * GB          # one training process besides its images (torch, model, buffers)
# auto gives every job at least this many torch threads: on the 2-core development machine two
# 1-thread processes trained 0.80-1.04x the images per second of one 2-thread process
# (benchmarks/cpu_engine.py), so a 2-core machine runs one run at a time
MIN_THREADS_PER_JOB = 2
ACTIVE_SLURM_STATES = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED")


@dataclass(frozen=True)
class SlurmOptions:
    """What each Slurm job asks for (submitit's slurm_* parameters)."""
    partition: str | None = None     # --slurm_partition
    gpus_per_job: int = 0            # --gpus_per_job
    cpus_per_job: int = 4            # --cpus_per_job: also the job's torch threads
    mem_gb: int = 16                 # --mem_gb
    time_min: int = 240              # --time_min: the job's time limit
    extra: tuple[str, ...] = ()      # --slurm_extra KEY=VALUE: any other submitit slurm_ parameter


def die_with_parent() -> None:
    """A local worker ends when the study process does, even when it is killed outright (Linux):
    an orphan would go on training and hold its run's lock against the rerun."""
    try:
        import ctypes
        import signal
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)     # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:           # not on Linux
        return os.cpu_count() or 1


def available_memory() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * GB


def choose_jobs(asked: int | None, runs_left: int, image_bytes: int, cuda: bool) -> tuple[int, int, str]:
    """(jobs at once, torch threads per job, why) on this machine.

    auto: one run per MIN_THREADS_PER_JOB cores while memory holds a process per run (its images plus
    PROCESS_OVERHEAD), never more than the runs left; on a CUDA machine one at a time (the runs would
    share one GPU)."""
    n_cores, mem = cores(), available_memory()
    per_job = PROCESS_OVERHEAD + image_bytes
    if asked is not None:
        jobs = max(1, min(asked, max(1, runs_left)))
        why = f"--jobs {asked}"
    elif cuda:
        jobs, why = 1, "a CUDA GPU: one run at a time on it (more only with --jobs)"
    else:
        by_memory = max(1, int(mem // per_job))
        jobs = max(1, min(n_cores // MIN_THREADS_PER_JOB, by_memory, runs_left))
        why = (f"{n_cores} core(s), at least {MIN_THREADS_PER_JOB} threads per run, {mem / GB:.0f} GiB free memory "
               f"(about {per_job / GB:.1f} GiB per run), {runs_left} run(s) to go")
    threads = max(1, n_cores // jobs)
    return jobs, threads, why


class LocalLauncher:
    """Each run in a fresh spawned process on this machine (the study submits `jobs` at a time).

    One single-worker pool per run: a run whose process dies (killed, out of memory) fails alone,
    where a shared pool would be broken for every run in it."""

    def __init__(self, folder: Path, slurm: SlurmOptions):
        # A worker that dies (killed, out of memory) leaves its pool's semaphores to multiprocessing's
        # resource tracker, which warns at exit in its own process; the failure is already reported
        # with the run's log, so that warning is only noise (set before the tracker starts).
        os.environ.setdefault("PYTHONWARNINGS", "ignore:resource_tracker:UserWarning")
        self.ctx = multiprocessing.get_context("spawn")      # no forked torch state; CUDA-safe
        self.pools: list[concurrent.futures.ProcessPoolExecutor] = []

    def submit(self, fn, arg):
        pool = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=self.ctx, initializer=die_with_parent)
        self.pools.append(pool)
        future = pool.submit(fn, arg)
        future.job_id = None
        return future

    def close(self) -> None:
        for pool in self.pools:
            pool.shutdown(wait=True, cancel_futures=True)


class SubmititLauncher:
    """One submitit job per run: on Slurm (`cluster="slurm"`) or submitit's local executor."""

    def __init__(self, cluster: str, folder: Path, slurm: SlurmOptions):
        try:
            import submitit
        except ImportError as e:
            raise SisaError("--launcher slurm needs submitit: pip install submitit (it is in requirements.txt)") from e
        self.executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
        params: dict = {"timeout_min": slurm.time_min, "cpus_per_task": slurm.cpus_per_job,
                        "gpus_per_node": slurm.gpus_per_job, "mem_gb": slurm.mem_gb, "name": folder.parent.name}
        if cluster == "slurm":
            if slurm.partition:
                params["slurm_partition"] = slurm.partition
            for item in slurm.extra:
                k, _, v = item.partition("=")
                params[k if k.startswith("slurm_") else f"slurm_{k}"] = v
        else:
            params.pop("mem_gb")       # the local executor takes no memory request
        self.executor.update_parameters(**params)

    def submit(self, fn, arg):
        return self.executor.submit(fn, arg)

    def close(self) -> None:
        pass


def make_launcher(name: str, folder: Path, slurm: SlurmOptions):
    """A launcher by its CLI name; how many run at once is the study's business (it submits them)."""
    if name == "local":
        return LocalLauncher(folder, slurm)
    if name in ("slurm", "submitit-local"):
        return SubmititLauncher("slurm" if name == "slurm" else "local", folder, slurm)
    raise SisaError(f"--launcher {name!r} is invalid: choose one of {', '.join(LAUNCHERS)}")


def reattach(name: str, folder: Path, job_id: str):
    """A Slurm job submitted by an earlier `--no_wait` that is still queued or running, else None."""
    if name != "slurm" or not job_id:
        return None
    import submitit
    job = submitit.SlurmJob(folder=folder, job_id=str(job_id))
    try:
        state = job.state
    except Exception:            # sacct unavailable: treat as gone, the run is submitted again
        return None
    return job if state.upper().split()[0] in ACTIVE_SLURM_STATES else None


def failure_line(handle, name: str, log: Path) -> str | None:
    """None for a job that finished well, else one line naming the run, the error and its log."""
    try:
        error = handle.exception()
    except Exception as e:        # submitit: the job died without a result (killed, timed out, node lost)
        error = e
    if error is None:
        return None
    where = f"; submitit's own logs: {handle.paths.stdout.parent}" if hasattr(handle, "paths") else ""
    return f"{name}: {first_line(error)} (log: {log}{where})"
