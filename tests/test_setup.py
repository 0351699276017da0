"""setup.sh in a copy of the project: each data source, a second run, and the clear failure."""
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from sisa.layout import PROJECT_ROOT

pytestmark = pytest.mark.slow      # each test runs setup.sh (pip included)


@pytest.fixture
def project(tmp_path):
    """A copy of the project's files (no data, no venv), beside no ../shared."""
    dest = tmp_path / "clone"
    dest.mkdir()
    for name in ("setup.sh", "requirements.txt", "sisa"):
        src = PROJECT_ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    return dest


def setup(project, **env):
    e = {**os.environ, "SISA_VENV": sys.prefix, **env}     # reuse this environment: no new install
    return subprocess.run(["bash", "setup.sh"], cwd=project, capture_output=True, text=True, env=e, timeout=600)


def test_setup_links_a_folder_and_is_safe_to_run_twice(project, own_faces_dir):
    first = setup(project, UTKFACE_DIR=str(own_faces_dir))
    assert first.returncode == 0, first.stderr
    assert (project / "data" / "UTKFace").resolve() == own_faces_dir.resolve()
    assert "usable face files" in first.stdout and "excluded 1" in first.stdout
    second = setup(project)
    assert second.returncode == 0 and "already there; keeping it" in second.stdout


def test_setup_unpacks_an_archive(project, own_faces_dir, tmp_path):
    archive = tmp_path / "UTKFace.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(own_faces_dir, arcname="UTKFace")
    p = setup(project, UTKFACE_ARCHIVE=str(archive))
    assert p.returncode == 0, p.stderr
    assert len(list((project / "data" / "UTKFace").iterdir())) == len(list(own_faces_dir.iterdir()))


def test_setup_says_what_to_do_when_no_data_can_be_had(project):
    p = setup(project, UTKFACE_URL="http://127.0.0.1:9/UTKFace.tar.gz")      # nothing listens there
    assert p.returncode != 0
    assert "UTKFACE_ARCHIVE" in p.stderr and "susanqq.github.io/UTKFace" in p.stderr
    assert not (project / "data" / "UTKFace").exists()
    bad = setup(project, UTKFACE_DIR="/no/such/folder")
    assert bad.returncode != 0 and "not a folder" in bad.stderr
