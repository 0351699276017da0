"""Every random choice of a run flows from its one `--seed`.

Streams are derived, never shared: `rng(seed, "test", fold)` and `rng(seed, "placement", fold)` are
independent generators, so changing how shards are filled never changes which faces are tested, and
fold 3 does not depend on how many numbers fold 2 drew. Every choice draws from an explicit generator,
with one exception: nn.Dropout cannot be handed one and draws from torch's global generators, so each
training stage seeds those from its own stream first (engine.stage_generators). The global RNGs of
`random` and numpy are never used.
"""
from __future__ import annotations

import zlib

import numpy as np


def _key(part: object) -> int:
    # Strings are folded into integers with a stable hash (Python's hash() is salted per process).
    if isinstance(part, (int, np.integer)):
        return int(part)
    return zlib.crc32(str(part).encode())


def seed_sequence(seed: int, *keys: object) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed), *(_key(k) for k in keys)])


def rng(seed: int, *keys: object) -> np.random.Generator:
    """A numpy generator for the stream named by `keys` under the run's `seed`."""
    return np.random.default_rng(seed_sequence(seed, *keys))


def torch_seed(seed: int, *keys: object) -> int:
    """A 63-bit integer seed for a `torch.Generator` / `torch.manual_seed` for the named stream."""
    return int(seed_sequence(seed, *keys).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
