"""Who asks to be forgotten, and how many: request scenarios at a volume.

A scenario says which training faces of a fold may request unlearning and in what order; a volume
says how many: a fraction of the fold's training faces, the same count for every scenario, so that
scenarios compare at equal volume (who asks, separated from how many).

  likelihood           the seed's request model at scale: every training face, drawn without
                       replacement with weight equal to its request probability (the shared latent
                       of likelihood.request_probability); the first faces are unlearning.request_order's
  random               every training face with equal weight: the volume-matched control
  group:RACE           only that race's training faces, in random order (group:black)
  group:RACE:AGE       only that race and age class (group:black:0-2)

Each fold's order is drawn once from a key of the seed, the scenario and the fold alone, so volumes
are nested (the faces of 1% are the first faces of 5%), a larger volume is served on top of a smaller
one, and a killed and resumed study forgets the same faces. A volume a scenario cannot supply is
refused in one line naming the largest it can.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .data import AGE_CLASSES, RACES
from .errors import SisaError
from .seeding import rng

KINDS = ("likelihood", "random", "group")


@dataclass(frozen=True)
class Scenario:
    kind: str                       # likelihood, random or group
    race: str | None = None         # group: the race asking
    age_class: str | None = None    # group: optionally only this age class of it

    @property
    def name(self) -> str:
        return ":".join(x for x in (self.kind, self.race, self.age_class) if x)

    @property
    def tag(self) -> str:
        """The name in a file or run name: group-black-0-2."""
        return self.name.replace(":", "-").replace("+", "plus")

    def eligible(self, train: pd.DataFrame) -> np.ndarray:
        """Which of a fold's training faces this scenario lets request."""
        mask = np.ones(len(train), bool)
        if self.race is not None:
            mask &= train["race"].to_numpy(int) == RACES.index(self.race)
        if self.age_class is not None:
            mask &= train["age_class"].to_numpy(int) == AGE_CLASSES.index(self.age_class)
        return mask


def parse(text: str) -> Scenario:
    """'likelihood', 'random', 'group:black' or 'group:black:0-2' -> Scenario (a clear error otherwise)."""
    kind, *rest = text.split(":", 2)
    if kind not in KINDS or (kind != "group" and rest) or (kind == "group" and not rest):
        raise SisaError(f"scenario {text!r} is invalid: use likelihood, random, group:RACE or group:RACE:AGE "
                        f"(races {', '.join(RACES)}; age classes {', '.join(AGE_CLASSES)})")
    if kind != "group":
        return Scenario(kind)
    race, age = rest[0], (rest[1] if len(rest) > 1 else None)
    if race not in RACES:
        raise SisaError(f"scenario {text!r}: {race!r} is not a race; use one of {', '.join(RACES)}")
    if age is not None and age not in AGE_CLASSES:
        raise SisaError(f"scenario {text!r}: {age!r} is not an age class; use one of {', '.join(AGE_CLASSES)}")
    return Scenario("group", race, age)


def training_faces(part: pd.DataFrame) -> pd.DataFrame:
    """A fold's training faces, forgotten ones included (the base every volume is a fraction of)."""
    return part[part["role"] == "train"]


def order(part: pd.DataFrame, scenario: Scenario, seed: int, fold: int) -> list[str]:
    """Every face of the fold the scenario lets request, in the order requests arrive (fixed keys)."""
    if scenario.kind == "likelihood":
        from .unlearning import request_order
        return request_order(part, seed, fold)          # the seed's model: served requests are its first faces
    train = training_faces(part)
    names = train["filename"].to_numpy()[scenario.eligible(train)]
    keys = rng(seed, "forget", scenario.name, fold).random(len(names))
    return names[np.argsort(keys, kind="stable")].astype(str).tolist()


def count(part: pd.DataFrame, volume: float) -> int:
    """Faces a volume asks for in a fold: that fraction of its training faces, rounded."""
    return int(round(volume * len(training_faces(part))))


def largest_volume(part: pd.DataFrame, scenario: Scenario) -> float:
    """The largest volume the scenario can supply in this fold (rounded down to 0.1%)."""
    train = training_faces(part)
    return math.floor(1000 * scenario.eligible(train).sum() / len(train)) / 1000


def forget_set(part: pd.DataFrame, scenario: Scenario, volume: float, seed: int, fold: int) -> list[str]:
    """The faces forgotten at this volume: the first count(volume) of the scenario's order."""
    if not 0 < volume <= 1:
        raise SisaError(f"--forget {volume} is invalid: give a fraction of the training faces above 0 and at most 1 "
                        "(0.05 for 5%)")
    n, faces = count(part, volume), order(part, scenario, seed, fold)
    if n > len(faces):
        raise SisaError(f"--forget {volume} asks for {n:,} faces of fold {fold}, but {scenario.name} has only "
                        f"{len(faces):,} training faces there: the largest volume it can supply is "
                        f"{largest_volume(part, scenario)}")
    if n == 0:
        raise SisaError(f"--forget {volume} is less than one face of fold {fold}'s {len(training_faces(part)):,} "
                        "training faces; ask for a larger volume")
    return faces[:n]


def step(part: pd.DataFrame, scenario: Scenario, smaller: float | None, volume: float, seed: int,
         fold: int) -> list[str]:
    """The faces a volume adds on top of a smaller one (None: all of the volume's): nested volumes make
    it a stretch of one order, drawn once."""
    faces = forget_set(part, scenario, volume, seed, fold)
    return faces[count(part, smaller) if smaller is not None else 0:]


def next_step(part: pd.DataFrame, scenario: Scenario, volume: float, seed: int, fold: int) -> list[str]:
    """The faces still to forget to reach the volume. The fold's forgotten faces must be the start of
    this scenario's order (a smaller volume served before); anything else is refused."""
    want = forget_set(part, scenario, volume, seed, fold)
    gone = set(part.loc[part["forgotten"], "filename"])
    if not gone <= set(want):
        extra = sorted(gone - set(want))
        raise SisaError(f"fold {fold} already forgot {len(extra):,} face(s) outside {scenario.name} at {volume} "
                        f"(e.g. {extra[0]}), from other requests or a larger volume; serve this scenario on a run "
                        "that has forgotten nothing else (train it again under another name)")
    return [f for f in want if f not in gone]
