"""Files that are never half-written, content hashes, and the run-folder lock.

Every file this project writes goes through `atomic_write`: the bytes go to a temporary file in the
same folder, are flushed to disk, and only then renamed over the target. A crash, a kill or a full
disk leaves either the old file or the new one, never a torn mix that a reader could take for whole.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .errors import SisaError


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_names(names) -> str:
    """Hash of a set of face file names: the identity of a training stage's data (order-free)."""
    return sha256_bytes("\n".join(sorted(names)).encode())


CHUNK = 1 << 26   # 64 MiB: the unit of the checksum of large arrays

try:   # xxh3 runs at memory speed (about 10 GB/s per core); zlib's CRC-32 at about 3
    import xxhash
except ImportError:   # e.g. a GPU machine with only PyTorch preinstalled and no package index
    xxhash = None


def _crc32(chunk: memoryview) -> bytes:
    return zlib.crc32(chunk).to_bytes(4, "big")


def _xxh3(chunk: memoryview) -> bytes:
    return xxhash.xxh3_64_digest(chunk)


CHUNK_CHECKSUMS = {"xxh3": _xxh3, "crc32": _crc32}


def checksum_available(kind: str) -> bool:
    return kind == "crc32" or (kind == "xxh3" and xxhash is not None)


def tree_digest(data: memoryview, kind: str | None = None) -> str:
    """Checksum of a large buffer: BLAKE2b over a fast checksum of each 64 MiB chunk, as "kind:hex".

    It guards the image cache against damage (a flipped byte, a truncated or half-copied file), not
    against an adversary. The chunk checksum is xxh3 when the `xxhash` package is installed, else
    zlib's CRC-32; the digest names its kind so a cache is always checked the way it was written.
    Both release the GIL, so the chunks are checked on all cores: a 2.8 GB cache in about 0.2 s with
    xxh3 (0.5 s with CRC-32, nine seconds with single-threaded SHA-256) on a 2-core machine.
    """
    kind = kind or ("xxh3" if xxhash is not None else "crc32")
    if not checksum_available(kind):
        raise ValueError(f"checksum {kind!r} is not available here (install xxhash)")
    one = CHUNK_CHECKSUMS[kind]
    data = memoryview(data).cast("B")
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        chunks = list(pool.map(one, (data[i:i + CHUNK] for i in range(0, len(data), CHUNK))))
    return f"{kind}:" + hashlib.blake2b(b"".join(chunks), digest_size=32).hexdigest()


def digest_kind(digest: str) -> str:
    """The checksum kind a tree_digest was made with (the part before its colon)."""
    return digest.split(":", 1)[0]


def load_npy_checked(path: Path, kind: str | None = None) -> tuple[np.ndarray, str]:
    """A read-only memory map of an .npy file, with the tree_digest (of `kind`) of its data.

    Mapping instead of reading saves a copy of gigabytes; the checksum pass pulls the pages in.
    """
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    size, expected = Path(path).stat().st_size, arr.offset + arr.nbytes
    if size != expected or not arr.flags.c_contiguous:
        raise ValueError(f"file holds {size} bytes, its header promises {expected} (truncated or padded)")
    return arr, tree_digest(memoryview(arr).cast("B"), kind)


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Call `write(f)` on a temp file next to `path`, fsync, then rename it onto `path`.

    On any failure the temp file is removed and the previous `path` (if any) is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise SisaError(f"could not write {path}: no room ({e.strerror}: the disk or a size limit is full); "
                            "the previous version of the file is intact; free space and rerun") from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


STALE_TEMP_SECONDS = 600   # a temp file this old, of a process that no longer runs here, is a leftover


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # someone else's process
        return True
    return True


def sweep_stale_temps(folder: Path, older_than: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Delete the temp files that killed writers left under `folder` (never read, only clutter).

    A temp file is removed only if its writer's PID is not running on this machine and it was last
    written more than `older_than` seconds ago, so a live writer (even on another host of a shared
    file system) is never disturbed. Returns what was removed.
    """
    gone = []
    for tmp in Path(folder).rglob(".*.tmp-*"):
        pid = tmp.name.rsplit(".tmp-", 1)[1]
        try:
            if not pid.isdigit() or _pid_alive(int(pid)) or time.time() - tmp.stat().st_mtime < older_than:
                continue
            tmp.unlink()
        except OSError:   # gone meanwhile, or not ours to delete: leave it
            continue
        gone.append(tmp)
    return gone


def write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: Path, obj, sort_keys: bool = True) -> None:
    """Write JSON atomically; sort_keys=False keeps the dicts' order (for files rendered in that order)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys, default=str) + "\n")


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SisaError(f"{path} is missing; the folder holding it is incomplete (restore the file, or rerun "
                        "the command that writes it)") from None
    except json.JSONDecodeError as e:
        raise SisaError(f"{path} is damaged (not valid JSON: {e}); restore it or rerun with --overwrite") from e


def append_line(path: Path, line: str) -> None:
    """Append one line durably (used for append-only logs; a torn last line is skipped by readers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict]:
    """Records of an append-only log; a torn final line (a crash mid-append) is ignored."""
    if not Path(path).exists():
        return []
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


@contextlib.contextmanager
def run_lock(lock_path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on a run folder, or fail at once if another process holds it.

    The OS releases the lock when the process dies, so a killed run never leaves a stale lock; the
    temp files a killed writer left in the folder are swept once the lock is held.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    f = open(lock_path, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise SisaError(f"{lock_path.parent} is in use by {holder}; wait for it to finish "
                        "(two processes must not write one run)") from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} ({what})\n")
        f.flush()
        sweep_stale_temps(lock_path.parent)
        yield
    finally:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        f.close()


@contextlib.contextmanager
def new_run_lock(root: Path, what: str) -> Iterator[None]:
    """run_lock on the run folder `root` for a command that may create it (train.py). If the
    command created the folder and leaves nothing in it but the LOCK (it failed on the data, a flag
    or the device before writing), the folder goes again, with any parent folder it created: a
    failed command leaves no empty run folder behind to be mistaken for a run."""
    root = Path(root)
    created, d = [], root
    while not d.exists():           # innermost first: the order to remove them in
        created.append(d)
        d = d.parent
    with run_lock(root / "LOCK", what):
        try:
            yield
        finally:
            if created and root.is_dir() and [p.name for p in root.iterdir()] == ["LOCK"]:
                (root / "LOCK").unlink()        # still held: another command cannot be inside
                for d in created:
                    with contextlib.suppress(OSError):     # not empty: someone else's now
                        d.rmdir()
