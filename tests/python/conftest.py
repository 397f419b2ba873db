import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DIST = Path(os.environ.get("MOEUPCYCLE_PREFIX", ROOT / "dist"))
os.environ.setdefault("MOEUPCYCLE_LIBRARY", str(DIST / "lib" / "libmoeupcycle.so"))
sys.path.insert(0, str(ROOT / "bindings" / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def rt():
    """A two-worker runtime shared by a module's tests."""
    from abi import Runtime
    r = Runtime(threads=2)
    yield r
    r.close()
