"""The distributions: build the sdist and the wheel, install the wheel into a fresh venv, run the console
script from outside the source tree, and check what the sdist ships.

No network: ``python -m build --no-isolation`` uses the hatchling installed beside the tests (the ``test``
extra installs ``build`` and ``hatchling``), and the fresh venv reuses this interpreter's site-packages
(torch, triton, numpy) through a ``.pth`` file, so nothing is downloaded. Deselect with
``-m 'not packaging'``.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.packaging,
    pytest.mark.skipif(
        importlib.util.find_spec("build") is None or importlib.util.find_spec("hatchling") is None,
        reason="needs build and hatchling (pip install -e '.[test]')",
    ),
    pytest.mark.skipif(not (ROOT / "pyproject.toml").is_file(), reason="not run from a source tree"),
]

# What the sdist must not ship (benchmark results, GPU scripts, CI files, notes), and what it must.
_SDIST_FORBIDDEN = ("benchmarks/", "scripts/", ".ci/", "NOTES.md", "dist/", "build/", "bench-out/")
_SDIST_REQUIRED = (
    "pyproject.toml", "README.md", "LICENSE", "src/rope_triton/__init__.py", "tests/conftest.py",
    "docs/design.md",
)


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
        f"--- stderr\n{proc.stderr[-4000:]}"
    )
    return proc


def _parent_site_dirs() -> list[str]:
    """Where this interpreter finds torch and triton: its site-packages, not the source tree."""
    dirs = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    dirs |= {p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")}
    # (The test venv may live inside the checkout, as the README's does: only the source tree is left out.)
    src = (ROOT / "src").resolve()
    return sorted(
        d for d in dirs
        if Path(d).is_dir() and Path(d).resolve() != src and src not in Path(d).resolve().parents
    )


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    # Without a target flag, build makes the sdist, then the wheel from the unpacked sdist: the wheel
    # can only be built if the sdist holds everything the build needs.
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT], cwd=out)
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return {"sdist": sdist, "wheel": wheel}


def test_sdist_contents(dists):
    with tarfile.open(dists["sdist"]) as tar:
        names = [n.split("/", 1)[1] for n in tar.getnames() if "/" in n]
    for prefix in _SDIST_FORBIDDEN:
        assert not [n for n in names if n.startswith(prefix)], f"the sdist ships {prefix}"
    for name in _SDIST_REQUIRED:
        assert name in names, f"the sdist lacks {name}"
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_wheel_contents(dists):
    with zipfile.ZipFile(dists["wheel"]) as whl:
        names = set(whl.namelist())
    package = {
        p.relative_to(ROOT / "src").as_posix() for p in (ROOT / "src" / "rope_triton").rglob("*.py")
    }
    assert package <= names, f"modules missing from the wheel: {sorted(package - names)}"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    beside = [n for n in names if not n.startswith("rope_triton")]
    assert not beside, f"the wheel ships files beside the package: {beside}"


def test_wheel_installs_and_benchmark_runs(dists, tmp_path):
    """The wheel in a fresh venv: the installed package (not the source tree) is imported, and the
    ``rope-triton`` console script runs a small benchmark from a directory outside the source tree."""
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv])
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / "python"
    # Install first, into an empty venv (pip sees no other rope-triton), then let the venv see this
    # interpreter's packages for torch and triton.
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", dists["wheel"]])
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    (Path(site) / "_parent_site.pth").write_text("\n".join(_parent_site_dirs()) + "\n")

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = _run([python, "-c", "import rope_triton; print(rope_triton.__file__)"], cwd=work, env=env)
    assert Path(where.stdout.strip()).resolve().is_relative_to(Path(site).resolve()), where.stdout

    # The smallest run that still goes through every stage (float64 check, timing, report, plot):
    # one tiny shape, rope-triton alone, forward and backward. On a CPU under TRITON_INTERPRET=1 (set by
    # conftest.py) the installed kernel runs in the interpreter: ~10 s; the default --quick CPU shapes
    # take minutes there.
    out = work / "bench-out"
    cmd = [bindir / "rope-triton", "bench", "--quick", "--shapes", "tiny", "--providers", "rope-triton",
           "--passes", "fwd,bwd", "--out", out]
    _run(cmd, cwd=work, env=env, timeout=600)
    with open(out / "results.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["provider"] == "rope-triton"]
    assert {r["pass"] for r in rows} == {"fwd", "bwd"}
    assert all(r["status"] == "ok" for r in rows), rows
