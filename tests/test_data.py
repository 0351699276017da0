"""Labels from file names, skipping bad files, and the decoded-image cache (real UTKFace images)."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from sisa.data import AGE_BOUNDS, age_class, load_faces, parse_name, skipped_summary
from sisa.errors import SisaError


def test_age_bins_at_their_bounds():
    assert [age_class(a) for a in (0, 2, 3, 9, 10, 20, 21, 27, 28, 45, 46, 65, 66, 116, 120)] == \
        [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 6]
    assert len(AGE_BOUNDS) == 7


def test_parse_name():
    assert parse_name("26_1_2_20170116174525125.jpg.chip.jpg") == (26, 1, 2)
    assert parse_name("100_0_4_20170112213500903.webp") == (100, 0, 4)
    assert parse_name("39_1_20170116174525125.jpg.chip.jpg").startswith("bad name")
    assert parse_name("x_1_2_2017.jpg").startswith("bad name")
    assert parse_name("121_0_0_2017.jpg").startswith("label out of range")
    assert parse_name("30_2_0_2017.jpg").startswith("label out of range")
    assert parse_name("30_0_5_2017.jpg").startswith("label out of range")
    assert parse_name("1_0_0_20170109193052283.jpg.chip.jpg").startswith("excluded")
    assert parse_name("1_0_0_20170109194120301.webp").startswith("excluded")


def test_load_real_faces_skips_and_reports(faces_dir, cache_dir):
    faces = load_faces(faces_dir, 32, cache_dir, progress=False)
    n_files = len(os.listdir(faces_dir))
    assert len(faces.table) + len(faces.skipped) == n_files
    assert faces.images.shape == (len(faces.table), 32, 32, 3) and faces.images.dtype == np.uint8
    reasons = dict(zip(faces.skipped["filename"], faces.skipped["reason"]))
    assert reasons["39_1_20170116174525125.jpg.chip.jpg"].startswith("bad name")
    assert reasons["1_0_0_20170109193052283.jpg.chip.jpg"].startswith("excluded")
    assert list(faces.table["filename"]) == sorted(faces.table["filename"])
    row = faces.table.iloc[0]
    assert parse_name(row["filename"])[0] == row["age"] and age_class(row["age"]) == row["age_class"]
    # the cached pixels are the decoded file, resized
    with Image.open(faces_dir / row["filename"]) as im:
        direct = np.asarray(im.convert("RGB").resize((32, 32), Image.BICUBIC))
    assert np.abs(faces.images[0].astype(int) - direct.astype(int)).mean() < 8   # draft-mode decode differs slightly
    assert skipped_summary(faces.skipped) == "skipped 2 file(s): bad name 1, excluded 1"


def test_bad_files_are_skipped_with_a_warning_or_fatal_when_strict(own_faces_dir, tmp_path):
    good = sorted(os.listdir(own_faces_dir))[0]
    data = (own_faces_dir / good).read_bytes()
    (own_faces_dir / "30_0_1_20990101000000001.jpg.chip.jpg").write_bytes(data[: len(data) // 3])  # truncated
    (own_faces_dir / "30_0_1_20990101000000002.jpg.chip.jpg").write_bytes(b"")                     # zero bytes
    (own_faces_dir / "30_0_1_20990101000000003.jpg.chip.jpg").write_text("not an image")           # not an image
    (own_faces_dir / "notes.txt").write_text("hello")                                             # bad name
    (own_faces_dir / "nested").mkdir()                                                            # folder
    with pytest.warns(UserWarning, match="unreadable image"):
        faces = load_faces(own_faces_dir, 24, tmp_path / "cache", progress=False)
    reasons = dict(zip(faces.skipped["filename"], faces.skipped["reason"]))
    for i in (1, 2, 3):
        assert reasons[f"30_0_1_2099010100000000{i}.jpg.chip.jpg"].startswith("unreadable image")
    assert reasons["notes.txt"].startswith("bad name") and reasons["nested"].startswith("not a file")
    assert not faces.table["filename"].str.startswith("30_0_1_2099").any()
    # the cache remembers unreadable files, and still reports them
    with pytest.warns(UserWarning, match="unreadable image"):
        again = load_faces(own_faces_dir, 24, tmp_path / "cache", progress=False)
    assert again.skipped.equals(faces.skipped)
    with pytest.raises(SisaError, match="strict_data"):
        load_faces(own_faces_dir, 24, tmp_path / "cache", strict=True, progress=False)


def test_empty_or_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SisaError, match="does not exist.*setup.sh"):
        load_faces(tmp_path / "nope", 32, tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(SisaError, match="no usable face images.*setup.sh"):
        load_faces(tmp_path / "empty", 32, tmp_path / "cache")


def _cache_of(cache_dir, size):
    (c,) = cache_dir.glob(f"utkface-{size}px-*")
    return c


def test_cache_is_reused_rebuilt_when_stale_and_never_trusted_when_damaged(own_faces_dir, tmp_path):
    cache_dir = tmp_path / "cache"
    first = load_faces(own_faces_dir, 24, cache_dir, progress=False)
    cache = _cache_of(cache_dir, 24)
    stamp = (cache / "images.npy").stat().st_mtime_ns
    second = load_faces(own_faces_dir, 24, cache_dir, progress=False)
    assert (cache / "images.npy").stat().st_mtime_ns == stamp           # loaded, not rebuilt
    assert np.array_equal(first.images, second.images) and first.fingerprint == second.fingerprint
    # damaged: flip one pixel byte -> detected by hash, rebuilt, same pixels as before
    raw = bytearray((cache / "images.npy").read_bytes())
    raw[-5] ^= 0xFF
    (cache / "images.npy").write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="damaged or stale"):
        third = load_faces(own_faces_dir, 24, cache_dir, progress=False)
    assert np.array_equal(third.images, first.images)
    # truncated file: detected too
    (cache / "images.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.warns(UserWarning, match="cache"):
        assert np.array_equal(load_faces(own_faces_dir, 24, cache_dir, progress=False).images, first.images)
    # changed folder: one face removed -> another key, a new cache, and the stale one is deleted
    victim = first.table["filename"].iloc[3]
    os.remove(own_faces_dir / victim)
    fourth = load_faces(own_faces_dir, 24, cache_dir, progress=False)
    assert victim not in set(fourth.table["filename"]) and len(fourth.table) == len(first.table) - 1
    assert _cache_of(cache_dir, 24) != cache and not cache.exists()
    assert fourth.fingerprint != first.fingerprint
    # a different size is a different cache
    load_faces(own_faces_dir, 20, cache_dir, progress=False)
    assert json.loads((_cache_of(cache_dir, 20) / "index.json").read_text())["size"] == 20


@pytest.mark.parametrize("kind", ["xxh3", "crc32"])
def test_tree_digest_sees_any_flipped_byte_in_any_chunk(kind, monkeypatch):
    from sisa import store
    monkeypatch.setattr(store, "CHUNK", 4096)        # many chunks from a small buffer
    data = np.random.default_rng(0).integers(0, 256, size=5 * 4096 + 123, dtype=np.uint8)
    base = store.tree_digest(memoryview(data), kind)
    assert base.startswith(f"{kind}:") and store.digest_kind(base) == kind
    for pos in (0, 4095, 4096, 3 * 4096 + 7, len(data) - 1):
        bad = data.copy()
        bad[pos] ^= 1
        assert store.tree_digest(memoryview(bad), kind) != base
    assert store.tree_digest(memoryview(data[:-1]), kind) != base   # one byte short
    assert store.tree_digest(memoryview(data), "xxh3") != store.tree_digest(memoryview(data), "crc32")


def test_cache_checksum_kind_never_changes_the_run_fingerprint(own_faces_dir, tmp_path, monkeypatch):
    from sisa import store
    cache_dir = tmp_path / "cache"
    fast = load_faces(own_faces_dir, 24, cache_dir, progress=False)
    index = json.loads((_cache_of(cache_dir, 24) / "index.json").read_text())
    assert index["digest"].startswith("xxh3:") and len(index["content"]) == 64
    # a machine without xxhash (the GPU box has only PyTorch): the cache is rebuilt with CRC-32,
    # and the faces keep their fingerprint, so runs made on either machine evaluate on the other
    monkeypatch.setattr(store, "xxhash", None)
    with pytest.warns(UserWarning, match="lacks"):
        slow = load_faces(own_faces_dir, 24, cache_dir, progress=False)
    cache = _cache_of(cache_dir, 24)
    index = json.loads((cache / "index.json").read_text())
    assert index["digest"].startswith("crc32:")
    assert slow.fingerprint == fast.fingerprint and np.array_equal(slow.images, fast.images)
    # and CRC-32 still catches damage
    raw = bytearray((cache / "images.npy").read_bytes())
    raw[-9] ^= 0x10
    (cache / "images.npy").write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="damaged or stale"):
        assert load_faces(own_faces_dir, 24, cache_dir, progress=False).fingerprint == fast.fingerprint
    monkeypatch.undo()
    # a cache of an older format is rebuilt, never half-read, and the faces keep their fingerprint
    index = json.loads((cache / "index.json").read_text())
    index["version"] -= 1
    (cache / "index.json").write_text(json.dumps(index))
    stamp = (cache / "images.npy").stat().st_mtime_ns
    with pytest.warns(UserWarning, match="damaged or stale"):
        old = load_faces(own_faces_dir, 24, cache_dir, progress=False)
    assert (cache / "images.npy").stat().st_mtime_ns != stamp and old.fingerprint == fast.fingerprint


def test_a_limited_run_decodes_only_its_faces_and_sees_the_same_either_way(own_faces_dir, tmp_path):
    """--limit chooses faces from file names and decodes only those: no whole-set cache is built (at
    200 px that is minutes and gigabytes for a small run); with the whole set's cache at hand the
    run's faces, pixels and fingerprint are the same. A damaged file in the subset is skipped as ever."""
    from sisa.config import RunConfig
    from sisa.experiment import Options, _faces_of_run
    (own_faces_dir / sorted(os.listdir(own_faces_dir))[7]).write_bytes(b"")          # one unreadable file
    cfg = RunConfig(image_size=24, limit=60, folds=2, num_shards=1, num_slices=1, strategy="random-kfold", run_name="x")
    alone = Options(data_dir=own_faces_dir, cache_dir=tmp_path / "empty", progress=False)
    faces, table, images = _faces_of_run(cfg, alone)
    assert not (tmp_path / "empty").exists() or not any((tmp_path / "empty").iterdir())   # nothing cached
    assert 55 <= len(table) <= 60 and images.shape == (len(table), 24, 24, 3)
    load_faces(own_faces_dir, 24, tmp_path / "full", progress=False)                 # the whole set's cache
    faces2, table2, images2 = _faces_of_run(cfg, Options(data_dir=own_faces_dir, cache_dir=tmp_path / "full",
                                                         progress=False))
    assert table2.equals(table) and np.array_equal(images2, images) and faces2.fingerprint == faces.fingerprint
