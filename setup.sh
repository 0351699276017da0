#!/usr/bin/env bash
# Set up this project: a virtual environment with the requirements, and UTKFace in data/UTKFace.
#
#   ./setup.sh                      # then: source .venv/bin/activate
#
# Where the data comes from, first match wins:
#   data/UTKFace already holds images         -> kept as it is
#   UTKFACE_DIR=/path/to/UTKFace               -> linked as data/UTKFace
#   UTKFACE_ARCHIVE=/path/to/UTKFace.tar.gz    -> unpacked into data/ (the published aligned & cropped archive)
#   ../shared/data/UTKFace exists              -> linked as data/UTKFace
#   otherwise                                  -> downloaded from UTKFACE_URL (default: the published archive)
# Other settings: SISA_VENV (default .venv; empty = install into the current python), PYTHON (default python3).
# Safe to run twice: nothing is downloaded or installed again that is already there.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
SISA_VENV=${SISA_VENV-.venv}
UTKFACE_URL=${UTKFACE_URL:-https://drive.google.com/uc?export=download&id=0BxYys69jI14kYVM3aVhKS1VhRUk}
say() { printf 'setup.sh: %s\n' "$*"; }
die() { printf 'setup.sh: error: %s\n' "$*" >&2; exit 1; }

# ---- 1. Python packages -------------------------------------------------------------------------
if [ -n "$SISA_VENV" ]; then
  [ -x "$SISA_VENV/bin/python" ] || { say "creating virtual environment $SISA_VENV"; "$PYTHON" -m venv "$SISA_VENV"; }
  PY="$SISA_VENV/bin/python"
else
  PY="$PYTHON"
fi
say "installing requirements.txt into $("$PY" -c 'import sys; print(sys.prefix)') (the first time takes minutes: torch is large)"
"$PY" -m pip install -q --disable-pip-version-check -r requirements.txt || die "pip could not install requirements.txt (see above)"

# ---- 2. UTKFace -------------------------------------------------------------------------------
mkdir -p data
count_images() { find -L "$1" -maxdepth 1 -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' -o -iname '*.webp' \) 2>/dev/null | wc -l; }
if [ -d data/UTKFace ] && [ "$(count_images data/UTKFace)" -gt 0 ]; then
  say "data/UTKFace is already there; keeping it"
elif [ -n "${UTKFACE_DIR:-}" ]; then
  [ -d "$UTKFACE_DIR" ] || die "UTKFACE_DIR=$UTKFACE_DIR is not a folder"
  rm -rf data/UTKFace && ln -s "$(cd "$UTKFACE_DIR" && pwd)" data/UTKFace
  say "linked data/UTKFace -> $UTKFACE_DIR"
elif [ -n "${UTKFACE_ARCHIVE:-}" ]; then
  [ -f "$UTKFACE_ARCHIVE" ] || die "UTKFACE_ARCHIVE=$UTKFACE_ARCHIVE is not a file"
  say "unpacking $UTKFACE_ARCHIVE into data/"
  rm -rf data/UTKFace && tar -xzf "$UTKFACE_ARCHIVE" -C data || die "could not unpack $UTKFACE_ARCHIVE (is it the .tar.gz?)"
elif [ -d ../shared/data/UTKFace ]; then
  rm -rf data/UTKFace && ln -s "$(cd ../shared/data/UTKFace && pwd)" data/UTKFace
  say "linked data/UTKFace -> ../shared/data/UTKFace"
else
  say "downloading UTKFace from $UTKFACE_URL"
  tmp=data/.UTKFace.tar.gz.part
  if curl -fL --retry 2 --connect-timeout 20 -o "$tmp" "$UTKFACE_URL" && tar -tzf "$tmp" >/dev/null 2>&1; then
    rm -rf data/UTKFace && tar -xzf "$tmp" -C data && rm -f "$tmp"
  else
    rm -f "$tmp"
    die "could not get UTKFace. Download 'UTKFace.tar.gz' (Aligned&Cropped Faces) from https://susanqq.github.io/UTKFace/ and rerun with UTKFACE_ARCHIVE=/path/to/UTKFace.tar.gz, or set UTKFACE_DIR to an unpacked folder (or UTKFACE_URL to a mirror)"
  fi
fi
[ -d data/UTKFace ] || die "the archive did not contain a UTKFace/ folder; set UTKFACE_DIR to the folder of images instead"

# ---- 3. Verify --------------------------------------------------------------------------------
"$PY" - <<'PY' || die "data/UTKFace holds no usable faces (see above); point UTKFACE_DIR at the UTKFace images"
import sys
from sisa.data import scan_folder, skipped_summary
import pandas as pd
faces, skipped = scan_folder("data/UTKFace")
print(f"setup.sh: data/UTKFace: {len(faces):,} usable face files; "
      + skipped_summary(pd.DataFrame(skipped, columns=["filename", "reason"])))
if not faces:
    sys.exit(1)
if len(faces) < 23_000:
    print(f"setup.sh: note: the full UTKFace set has 23,702 usable faces; this folder has {len(faces):,}")
PY
say "ready. Activate the environment with: source ${SISA_VENV:-<your env>}/bin/activate"
