"""The GPU tools in scripts/ still start: each prints its usage, and the tuning sweep builds its configs from
the launcher's current rule (it imports private names of rope_triton._core, so a rename shows up here
rather than on the next GPU run). Skipped where scripts/ is absent (the sdist does not ship it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"

pytestmark = pytest.mark.skipif(not SCRIPTS.is_dir(), reason="no scripts/ (not a git checkout)")


def _run(*cmd: str) -> subprocess.CompletedProcess:
    # The scripts put src/ on sys.path themselves; TRITON_INTERPRET (set by conftest.py on a CPU) is kept.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_every_script_has_a_usage_line():
    scripts = sorted(p for p in SCRIPTS.rglob("*") if p.is_file())
    assert scripts, "scripts/ is empty"
    for path in scripts:
        head = path.read_text(encoding="utf-8").splitlines()[:3]
        assert any("Usage:" in line for line in head), f"{path.relative_to(ROOT)}: no usage line at the top"


@pytest.mark.parametrize("script", ["tune.py", "profile", "cp_timing.py", "e2e_step.py"])
def test_python_script_help(script):
    out = _run(sys.executable, str(SCRIPTS / script), "--help").stdout
    assert out.startswith("usage:")


def test_tune_lists_the_rule_and_its_variants():
    shapes = "llama3-8b,gptj,d64"
    out = _run(sys.executable, str(SCRIPTS / "tune.py"), "--list", "--shapes", shapes).stdout
    blocks = out.split("== ")[1:]
    assert len(blocks) == 3
    for block in blocks:
        lines = block.splitlines()
        assert lines[1].split()[0] == "rule" and len(lines) > 3, block


def test_gpu_check_help():
    out = _run("bash", str(SCRIPTS / "gpu-check"), "--help").stdout
    assert out.startswith("Usage: scripts/gpu-check")
