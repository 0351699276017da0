"""Pack UTKFace for a GPU check: re-encoded as WebP, split into parts that each travel in one command.

    .venv/bin/python benchmarks/pack_faces.py --size 200 --max_mib 44 --out .device     # -> .device/utk200-1of2.tar, -2of2.tar

The device machine takes at most 64 MiB of files per command; the whole set at 200 px as WebP q85 is
about 86 MiB, so it goes in two parts over two commands on the same warm machine (ignored folders
stay between them): `bash benchmarks/gpu_check.sh unpack .device/utk200-1of2.tar`, then
`bash benchmarks/gpu_check.sh all .device/utk200-2of2.tar`. Smaller sizes (128 px) come from the same
files there (the image cache resizes). Parts are plain tar files of `utk<size>/<name>.webp`; the file
names keep the labels (age_gender_race_datetime), so the checks read them like the JPEG set.
"""
from __future__ import annotations

import argparse
import io
import sys
import tarfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sisa.data import scan_folder  # noqa: E402
from sisa.layout import DEFAULT_DATA  # noqa: E402


def encode(args: tuple[str, int, int]) -> bytes:
    from PIL import Image
    path, size, quality = args
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, format="WEBP", quality=quality)
        return buf.getvalue()


def pack(data_dir: Path, size: int, max_mib: float, out: Path, quality: int = 85, limit: int | None = None) -> list[Path]:
    faces, _ = scan_folder(data_dir)
    names = [n for n, _ in faces][:limit]
    with ProcessPoolExecutor() as pool:
        blobs = list(pool.map(encode, [(str(data_dir / n), size, quality) for n in names], chunksize=64))
    parts, current, used = [], [], 0
    for name, blob in zip(names, blobs):
        if current and used + len(blob) + 1024 > max_mib * 2 ** 20:
            parts.append(current)
            current, used = [], 0
        current.append((name, blob))
        used += len(blob) + 1024                       # a tar header and padding per file
    parts.append(current)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, part in enumerate(parts, start=1):
        path = out / f"utk{size}-{i}of{len(parts)}.tar"
        with tarfile.open(path, "w") as tar:
            for name, blob in part:
                info = tarfile.TarInfo(f"utk{size}/{name.split('.', 1)[0]}.webp")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
        paths.append(path)
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data_dir", type=Path, default=DEFAULT_DATA, help=f"UTKFace images (default {DEFAULT_DATA})")
    p.add_argument("--size", type=int, default=200, help="side in px (default 200)")
    p.add_argument("--max_mib", type=float, default=44.0, help="largest part in MiB (default 44: room for the code)")
    p.add_argument("--quality", type=int, default=85, help="WebP quality (default 85)")
    p.add_argument("--limit", type=int, default=None, help="only the first N faces (default all)")
    p.add_argument("--out", type=Path, default=Path(".device"), help="folder for the parts (default .device, ignored by git)")
    a = p.parse_args(argv)
    paths = pack(a.data_dir, a.size, a.max_mib, a.out, a.quality, a.limit)
    for path in paths:
        print(f"{path}: {path.stat().st_size / 2 ** 20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
