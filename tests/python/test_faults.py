"""Faults while writing outputs, through the CLI: SIGKILL in the middle of `upcycle` and of
training saves, a full disk, a read-only destination, the file-size limit, and a file system
without an atomic exchange. After each: the output is complete or absent (never partial), the
input is unchanged, nothing half-written is visible, and the next run to the same output
removes the temporaries the killed run left."""
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from models import CLI, dense_weights, write_hf

UPCYCLE = ["--experts", "8", "--max-shard-size", "8000000"]

# Fails write() with ENOSPC once MOE_FAULT_ENOSPC_AFTER bytes went to files (fd > 2),
# creation under MOE_FAULT_EROFS_UNDER with EROFS, and renameat2 with EINVAL under
# MOE_FAULT_NO_EXCHANGE (a file system without RENAME_EXCHANGE / RENAME_NOREPLACE).
SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

static long long budget = -1;
static const char *readonly;
static int no_exchange;

__attribute__((constructor)) static void init(void) {
  const char *b = getenv("MOE_FAULT_ENOSPC_AFTER");
  if (b) budget = atoll(b);
  readonly = getenv("MOE_FAULT_EROFS_UNDER");
  no_exchange = getenv("MOE_FAULT_NO_EXCHANGE") != NULL;
}

static int under(const char *path) {
  return readonly && path && strncmp(path, readonly, strlen(readonly)) == 0;
}

static long long allowed(size_t n) {
  if (budget < 0) return (long long)n;
  if (budget == 0) { errno = ENOSPC; return -1; }
  return (long long)n < budget ? (long long)n : budget;
}

ssize_t write(int fd, const void *buf, size_t n) {
  static ssize_t (*real)(int, const void *, size_t);
  if (!real) real = (ssize_t (*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
  if (fd <= 2) return real(fd, buf, n);
  long long k = allowed(n);
  if (k < 0) return -1;
  ssize_t r = real(fd, buf, (size_t)k);
  if (r > 0 && budget > 0) budget -= r;
  return r;
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
  static ssize_t (*real)(int, const void *, size_t, off_t);
  if (!real) real = (ssize_t (*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite");
  if (fd <= 2) return real(fd, buf, n, off);
  long long k = allowed(n);
  if (k < 0) return -1;
  ssize_t r = real(fd, buf, (size_t)k, off);
  if (r > 0 && budget > 0) budget -= r;
  return r;
}

int mkdir(const char *path, mode_t mode) {
  static int (*real)(const char *, mode_t);
  if (!real) real = (int (*)(const char *, mode_t))dlsym(RTLD_NEXT, "mkdir");
  if (under(path)) { errno = EROFS; return -1; }
  return real(path, mode);
}

#define OPEN_SHIM(name)                                                              \
  int name(const char *path, int flags, ...) {                                       \
    static int (*real)(const char *, int, ...);                                      \
    if (!real) real = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, #name);      \
    mode_t mode = 0;                                                                 \
    if (flags & O_CREAT) { va_list ap; va_start(ap, flags); mode = va_arg(ap, int); va_end(ap); } \
    if (under(path) && (flags & (O_CREAT | O_WRONLY | O_RDWR))) { errno = EROFS; return -1; } \
    return real(path, flags, mode);                                                  \
  }
OPEN_SHIM(open)
OPEN_SHIM(open64)

int openat(int dirfd, const char *path, int flags, ...) {
  static int (*real)(int, const char *, int, ...);
  if (!real) real = (int (*)(int, const char *, int, ...))dlsym(RTLD_NEXT, "openat");
  mode_t mode = 0;
  if (flags & O_CREAT) { va_list ap; va_start(ap, flags); mode = va_arg(ap, int); va_end(ap); }
  if (under(path) && (flags & (O_CREAT | O_WRONLY | O_RDWR))) { errno = EROFS; return -1; }
  return real(dirfd, path, flags, mode);
}

int rename(const char *from, const char *to) {
  static int (*real)(const char *, const char *);
  if (!real) real = (int (*)(const char *, const char *))dlsym(RTLD_NEXT, "rename");
  if (under(from) || under(to)) { errno = EROFS; return -1; }
  return real(from, to);
}

int renameat2(int fromfd, const char *from, int tofd, const char *to, unsigned flags) {
  static int (*real)(int, const char *, int, const char *, unsigned);
  if (!real) real = (int (*)(int, const char *, int, const char *, unsigned))dlsym(RTLD_NEXT, "renameat2");
  if (no_exchange && flags) { errno = EINVAL; return -1; }
  if (under(from) || under(to)) { errno = EROFS; return -1; }
  return real(fromfd, from, tofd, to, flags);
}
"""


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    d = tmp_path_factory.mktemp("shim")
    (d / "shim.c").write_text(SHIM)
    subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", str(d / "shim.so"), str(d / "shim.c"), "-ldl"],
                   check=True, capture_output=True)
    return d / "shim.so"


def run(*args, env=None, preexec_fn=None):
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True,
                          env=None if env is None else {**os.environ, **env}, preexec_fn=preexec_fn)


def digest(path: Path) -> str:
    """Names and bytes of every file under `path` (or of the file itself)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def temporaries(out: Path):
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp-"))


def temporary_bytes(out: Path) -> int:
    total = 0
    for name in temporaries(out):
        try:
            for f in (out.parent / name).iterdir():
                total += f.stat().st_size
        except FileNotFoundError:
            pass  # renamed or removed while we looked
    return total


def kill_when(cmd, out: Path, trigger, timeout=60):
    """Starts `cmd` and SIGKILLs it as soon as trigger(temporary names seen so far,
    bytes in the temporaries now) holds; returns (exit status, whether a temporary existed at the kill)."""
    p = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = set()
    deadline = time.monotonic() + timeout
    while p.poll() is None and time.monotonic() < deadline:
        names = temporaries(out)
        seen.update(names)
        if names and trigger(seen, temporary_bytes(out)):
            p.send_signal(signal.SIGKILL)
            break
        time.sleep(0.0005)
    rc = p.wait(timeout=timeout)
    return rc, bool(temporaries(out))


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A dense model whose upcycle writes ~100 MB in ~15 shards (about a second), and its reference output."""
    d = tmp_path_factory.mktemp("faults")
    src = d / "dense"
    write_hf(src, dense_weights(np.random.default_rng(3), layers=4, hidden=256, ffn=1024, heads=4, kv_heads=2,
                                vocab=256), heads=4, kv_heads=2)
    ref = d / "reference"
    r = run("upcycle", src, ref, *UPCYCLE)
    assert r.returncode == 0, r.stderr
    total = sum(f.stat().st_size for f in ref.iterdir())
    return src, digest(src), ref, digest(ref), total


def test_sigkill_during_upcycle_leaves_a_complete_output_or_none(big, tmp_path):
    src, src_digest, _, ref_digest, total = big
    out = tmp_path / "moe"
    # From the first file to after the last tensor byte (only JSON, sync and the rename left).
    triggers = [lambda s, b: True, lambda s, b: b >= 0.15 * total, lambda s, b: b >= 0.4 * total,
                lambda s, b: b >= 0.65 * total, lambda s, b: b >= 0.9 * total, lambda s, b: b >= total - 4096]
    mid_run = 0
    for trigger in triggers:
        rc, left = kill_when([CLI, "upcycle", src, out, *UPCYCLE, "--force"], out, trigger)
        assert rc in (0, -signal.SIGKILL)
        mid_run += rc == -signal.SIGKILL and left
        # Complete (same bytes as an uninterrupted run, and readable) or absent; never partial.
        if out.exists():
            assert digest(out) == ref_digest
            assert run("info", out).returncode == 0
        assert digest(src) == src_digest
    assert mid_run >= 4, f"only {mid_run} kills landed while the temporary was being written"
    left_behind = temporaries(out)  # what the killed runs left
    assert left_behind
    # The next run to the same output removes them, and says so.
    r = run("upcycle", src, out, *UPCYCLE, "--force")
    assert r.returncode == 0, r.stderr
    assert temporaries(out) == []
    n = len(left_behind)
    assert f"removed {n} temporar{'y' if n == 1 else 'ies'} of '{out}'" in r.stderr, r.stderr
    assert digest(out) == ref_digest and digest(src) == src_digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["moe"]


def test_sigkill_during_a_forced_replacement_keeps_the_old_or_the_new_output(big, tmp_path):
    src, src_digest, _, _, total = big
    out, new = tmp_path / "moe", tmp_path / "new"
    assert run("upcycle", src, out, *UPCYCLE, "--seed", "1").returncode == 0
    assert run("upcycle", src, new, *UPCYCLE, "--seed", "2").returncode == 0
    old_digest, new_digest = digest(out), digest(new)
    assert old_digest != new_digest
    current = old_digest
    for fraction in (0.3, 0.8, 1.0):
        rc, _ = kill_when([CLI, "upcycle", src, out, *UPCYCLE, "--seed", "2", "--force"], out,
                          lambda s, b: b >= fraction * total - (4096 if fraction == 1.0 else 0))
        assert rc in (0, -signal.SIGKILL)
        # The exchange is atomic: always one complete output, old until the swap, new after.
        after = digest(out)
        assert after in (old_digest, new_digest) and run("info", out).returncode == 0
        assert not (current == new_digest and after == old_digest)
        current = after
        assert digest(src) == src_digest
    r = run("upcycle", src, out, *UPCYCLE, "--seed", "2", "--force")
    assert r.returncode == 0, r.stderr
    assert digest(out) == new_digest and temporaries(out) == []


def test_sigkill_during_training_saves(tmp_path):
    model = tmp_path / "dense"
    write_hf(model, dense_weights(np.random.default_rng(5), layers=2, hidden=128, ffn=512, heads=4, kv_heads=2,
                                  vocab=256), heads=4, kv_heads=2)
    model_digest = digest(model)
    ids = tmp_path / "ids.txt"
    ids.write_text(" ".join(str(i) for i in np.random.default_rng(1).integers(0, 256, 3000)))
    common = ["--data", ids, "--ids", "--batch", "1", "--seq-len", "16", "--eval-fraction", "0", "--seed", "3"]
    out = tmp_path / "ck"
    left_behind = 0
    for saves in (1, 3, 6):
        # Kill while the save number `saves` is being written.
        rc, left = kill_when([CLI, "train", model, "--out", out, "--steps", "40", "--save-every", "1", "--force",
                              *common], out, lambda seen, b: len(seen) >= saves)
        assert rc == -signal.SIGKILL
        left_behind += left
        assert digest(model) == model_digest
        if out.exists():
            # A complete checkpoint: it loads, evaluates and resumes (one more step, saved over it).
            assert run("info", out).returncode == 0
            ev = run("eval", out, "--data", ids, "--ids", "--seq-len", "16")
            assert ev.returncode == 0 and "perplexity" in ev.stdout, ev.stderr
            step = int(json.loads((out / "trainer.json").read_text())["step"])
            r = run("train", model, "--out", out, "--resume", "--steps", step + 1, *common)
            assert r.returncode == 0 and f"step {step + 1:5d}/{step + 1}" in r.stdout, r.stdout + r.stderr
        else:
            r = run("train", model, "--out", out, "--steps", "1", *common)
            assert r.returncode == 0, r.stderr
        # The run after the kill removed what the killed one left.
        assert temporaries(out) == []
    assert left_behind >= 1, "no kill landed during a save"
    assert digest(model) == model_digest


def expect_nothing_written(parent: Path, before, r, *fragments):
    assert r.returncode == 1, r.stdout + r.stderr
    for f in fragments:
        assert f in r.stderr, r.stderr
    assert sorted(p.name for p in parent.iterdir()) == before


def test_disk_full_is_a_clear_error_and_leaves_nothing(big, shim, tmp_path):
    src, src_digest, _, _, _ = big
    out = tmp_path / "moe"
    r = run("upcycle", src, out, *UPCYCLE, env={"LD_PRELOAD": str(shim), "MOE_FAULT_ENOSPC_AFTER": "20000000"})
    expect_nothing_written(tmp_path, [], r, "No space left on device", "cannot write", ".safetensors", str(out))
    # Also during a forced replacement: the old output stays as it was.
    assert run("upcycle", src, out, *UPCYCLE, "--seed", "1").returncode == 0
    old = digest(out)
    r = run("upcycle", src, out, *UPCYCLE, "--force", env={"LD_PRELOAD": str(shim), "MOE_FAULT_ENOSPC_AFTER": "5000000"})
    expect_nothing_written(tmp_path, ["moe"], r, "No space left on device")
    assert digest(out) == old and digest(src) == src_digest


def test_disk_full_during_a_training_save(shim, tmp_path):
    model = tmp_path / "dense"
    write_hf(model, dense_weights(np.random.default_rng(2)), heads=4, kv_heads=2)
    ids = tmp_path / "ids.txt"
    ids.write_text(" ".join(str(i % 96) for i in range(600)))
    before = sorted(p.name for p in tmp_path.iterdir())
    r = run("train", model, "--out", tmp_path / "ck", "--log", "/dev/null", "--steps", "1", "--data", ids, "--ids",
            "--seq-len", "16", env={"LD_PRELOAD": str(shim), "MOE_FAULT_ENOSPC_AFTER": "10000"})
    expect_nothing_written(tmp_path, before, r, "No space left on device")


def test_read_only_destination(big, shim, tmp_path):
    src, src_digest, ref, ref_digest, _ = big
    dest = tmp_path / "ro"
    dest.mkdir()
    env = {"LD_PRELOAD": str(shim), "MOE_FAULT_EROFS_UNDER": str(dest)}
    r = run("upcycle", src, dest / "moe", *UPCYCLE, env=env)
    expect_nothing_written(dest, [], r, "Read-only file system", str(dest / "moe"))
    # An existing output under it is neither replaced nor touched.
    r = run("upcycle", src, ref, *UPCYCLE, "--force", env={**env, "MOE_FAULT_EROFS_UNDER": str(ref.parent)})
    assert r.returncode == 1 and "Read-only file system" in r.stderr
    assert digest(ref) == ref_digest and temporaries(ref) == [] and digest(src) == src_digest


def test_file_size_limit_is_a_clear_error(big, tmp_path):
    """`ulimit -f`: the host ignores SIGXFSZ itself, so the write fails with EFBIG and is reported."""
    src, _, _, _, _ = big

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))

    r = run("upcycle", src, tmp_path / "moe", *UPCYCLE, preexec_fn=limited)
    expect_nothing_written(tmp_path, [], r, "File too large", "cannot write")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("existing", [False, True], ids=["new", "forced"])
def test_sigint_and_sigterm_during_upcycle_stop_cleanly(big, tmp_path, sig, existing):
    """Ctrl-C or a TERM while the temporary fills: the command cancels through the library, which removes
    the temporary; the output is absent (or the old one, untouched), the input unchanged, exit 128 + signal."""
    src, src_digest, ref, ref_digest, total = big
    out = tmp_path / "moe"
    if existing:
        shutil.copytree(ref, out)
    p = subprocess.Popen([str(CLI), "upcycle", src, out, *UPCYCLE, "--force"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    sent = False
    while p.poll() is None and time.monotonic() < deadline:
        if temporaries(out) and temporary_bytes(out) >= 0.2 * total:
            p.send_signal(sig)
            sent = True
            break
        time.sleep(0.0005)
    stdout, stderr = p.communicate(timeout=60)
    assert sent, "the upcycle finished before the signal could be sent"
    assert p.returncode == 128 + sig, (p.returncode, stderr)
    assert "stopped by" in stderr and "nothing was left half-written" in stderr, stderr
    assert temporaries(out) == []
    if existing:
        assert digest(out) == ref_digest
    else:
        assert not out.exists()
    assert digest(src) == src_digest


def test_replacement_without_an_atomic_exchange(big, shim, tmp_path):
    """File systems that refuse RENAME_EXCHANGE get two renames; the result is the same."""
    src, _, _, ref_digest, _ = big
    out = tmp_path / "moe"
    assert run("upcycle", src, out, *UPCYCLE, "--seed", "1").returncode == 0
    r = run("upcycle", src, out, *UPCYCLE, "--force", env={"LD_PRELOAD": str(shim), "MOE_FAULT_NO_EXCHANGE": "1"})
    assert r.returncode == 0, r.stderr
    assert digest(out) == ref_digest and temporaries(out) == []
    # A new output moves in with a plain rename there too.
    r = run("upcycle", src, tmp_path / "second", *UPCYCLE, env={"LD_PRELOAD": str(shim), "MOE_FAULT_NO_EXCHANGE": "1"})
    assert r.returncode == 0, r.stderr
    assert digest(tmp_path / "second") == ref_digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["moe", "second"]


def test_output_messages(big, tmp_path):
    src = big[0]
    f = tmp_path / "file"
    f.write_text("keep")
    r = run("upcycle", src, f / "moe")
    assert r.returncode == 1 and "not a directory" in r.stderr and "does not exist" not in r.stderr
    r = run("upcycle", src, f, "--force")
    assert r.returncode == 1 and "is a regular file" in r.stderr
    (tmp_path / "link").symlink_to(f)
    r = run("upcycle", src, tmp_path / "link", "--force")
    assert r.returncode == 1 and "symbolic link" in r.stderr
    r = subprocess.run([str(CLI), "upcycle", str(src), ".", "--force"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 1 and "current directory" in r.stderr and "busy" not in r.stderr
    r = subprocess.run([str(CLI), "upcycle", str(src), str(tmp_path), "--force"], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 1 and "current directory" in r.stderr
    r = run("upcycle", src, tmp_path / "moe", "--layers", "")
    assert r.returncode == 1 and "empty" in r.stderr and "all" in r.stderr
    assert f.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["file", "link"]
