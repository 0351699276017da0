"""One run of a study as a job: what a worker process or a Slurm job receives, and its entry point."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import SisaError, first_line
from ..experiment import Options


@dataclass(frozen=True)
class Job:
    """One run of a study as a worker process (or a Slurm job) receives it: everything pickles."""
    settings: dict                   # the study's Settings.to_dict()
    key: tuple                       # (test, configuration, seed index)
    opts: Options
    summaries_dir: Path
    reports_dir: Path
    threads: int                     # torch threads of this job
    log: Path                        # reports/<study>/logs/<run>.log
    name: str                        # the run's name


def run_job(job: Job) -> str:
    """A job's entry point (launch.py runs it in a worker process or a Slurm job): every unfinished
    phase of one run, its output in the run's log. On failure the traceback goes to the log and a
    one-line error to the study (an exception that pickles, whatever the original was). SIGTERM (Slurm's
    time limit, scancel) ends the job like Ctrl-C, so the phase's seconds are recorded."""
    import contextlib
    import os
    import signal
    import traceback

    import torch

    from .runner import Study
    from .settings import Settings

    def terminated(signum, frame):
        raise SystemExit(f"terminated by signal {signum}")
    signal.signal(signal.SIGTERM, terminated)
    torch.set_num_threads(job.threads)
    job.log.parent.mkdir(parents=True, exist_ok=True)
    with open(job.log, "a", buffering=1) as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {job.name}: pid {os.getpid()} on {os.uname().nodename}, "
              f"{job.threads} torch thread(s)")
        try:
            Study(Settings.from_dict(job.settings), job.opts, job.summaries_dir, job.reports_dir,
                  say=print).run_one(job.key, log)
        except BaseException as e:
            traceback.print_exc()
            raise SisaError(f"{type(e).__name__}: {first_line(e)}") from None
        print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {job.name}: done")
    return job.name
