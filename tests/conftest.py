"""Shared fixtures: small folders of *real* UTKFace images, taken from the full set.

The full set is looked for in $UTKFACE_DIR, then data/UTKFace, then ../shared/data/UTKFace. Tests
that need faces are skipped when none of these exists (nothing is downloaded by the tests).
"""
from __future__ import annotations

import os
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from sisa.data import age_class, parse_name
from sisa.layout import PROJECT_ROOT

KNOWN_BAD = ["39_1_20170116174525125.jpg.chip.jpg",        # no race field
             "1_0_0_20170109193052283.jpg.chip.jpg"]        # eye crop, not a face


def full_dataset() -> Path | None:
    for c in (os.environ.get("UTKFACE_DIR"), PROJECT_ROOT / "data" / "UTKFace",
              PROJECT_ROOT.parent / "shared" / "data" / "UTKFace"):
        if c and Path(c).is_dir() and any(Path(c).iterdir()):
            return Path(c)
    return None


def make_subset(dest: Path, per_cell: int) -> Path:
    """Copy the first `per_cell` faces (by name) of every race x age-class cell, plus known bad files."""
    src = full_dataset()
    if src is None:
        pytest.skip("the UTKFace images are not here (set UTKFACE_DIR or run ./setup.sh)")
    cells = defaultdict(list)
    for name in sorted(os.listdir(src)):
        labels = parse_name(name)
        if not isinstance(labels, str):
            cells[(labels[2], age_class(labels[0]))].append(name)
    dest.mkdir(parents=True)
    for cell in sorted(cells):
        for name in cells[cell][:per_cell]:
            shutil.copy(src / name, dest / name)
    for name in KNOWN_BAD:
        if (src / name).exists():
            shutil.copy(src / name, dest / name)
    return dest


@pytest.fixture(scope="session")
def faces_dir(tmp_path_factory) -> Path:
    """~12 real faces per race x age class (about 410 faces) plus 2 known bad files. Read-only use!"""
    return make_subset(tmp_path_factory.mktemp("utk") / "UTKFace", per_cell=12)


@pytest.fixture
def own_faces_dir(tmp_path) -> Path:
    """A small private copy (4 per cell) that a test may damage."""
    return make_subset(tmp_path / "UTKFace", per_cell=4)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")
