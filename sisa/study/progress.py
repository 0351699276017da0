"""A study's record of its runs' phases: which are done, where their outputs went, and their seconds.

One file per run (reports/<study>/progress/<run>.json), written only by the process running that
run, so runs in parallel never write one file. A phase's seconds add up over every attempt, an
interrupted one included (an exception, Ctrl-C or SIGTERM; only a SIGKILL loses the attempt's
seconds): they are the study's one source of time. The record is never trusted alone: the study
skips a phase only when its outputs exist where it looks now (runner.Study.pending), and each
record says which folders its outputs went to. A study from before these files keeps its
progress.json (read, not written).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Iterator

from ..layout import StudyLayout
from ..store import read_json, write_json

PHASES = ("train", "evaluate", "unlearning", "evaluate after unlearning")


@dataclass
class Progress:
    layout: StudyLayout
    done: dict = field(default_factory=dict)     # run -> {phase: {seconds, done, attempts, ...facts}}

    @classmethod
    def load(cls, layout: StudyLayout) -> "Progress":
        done = read_json(layout.state) if layout.state.exists() else {}
        for path in layout.run_states():
            done[path.stem] = read_json(path)
        return cls(layout, done)

    def phases(self, run: str) -> dict:
        """A run's phase records (a scenario's clone: one "forget <volume>" per step; an approximate
        method's summary: "approximate"; a baseline's tuning of the methods: "tune")."""
        return {k: v for k, v in self.done.get(run, {}).items()
                if k in PHASES or k.startswith("forget ") or k in ("approximate", "tune")}

    def seconds(self) -> float:
        """Seconds of every phase of every run, over all the attempts that ran them."""
        return sum(ph["seconds"] for run in self.done for ph in self.phases(run).values())

    def finished(self, run: str, phase: str) -> bool:
        rec = self.phases(run).get(phase)
        return rec is not None and rec.get("done", True)          # files before the flag: recorded = done

    def fact(self, run: str, phase: str, key: str, default=None):
        return self.phases(run).get(phase, {}).get(key, default)

    @contextlib.contextmanager
    def phase(self, run: str, phase: str) -> Iterator[dict]:
        """Time one attempt at a phase: `with progress.phase(run, "train") as facts: ...; facts[k] = v`.
        The seconds are added to the record however the attempt ends; `done` only when it succeeds."""
        facts: dict = {}
        t, ok = time.perf_counter(), False
        try:
            yield facts
            ok = True
        finally:
            old = self.done.setdefault(run, {}).get(phase, {})
            self.done[run][phase] = {**old, **facts, "seconds": old.get("seconds", 0.0) + time.perf_counter() - t,
                                     "attempts": old.get("attempts", 1 if old else 0) + 1, "done": ok}
            write_json(self.layout.run_state(run), self.done[run])
