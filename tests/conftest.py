"""Test setup: run the real Triton kernels on the CPU through Triton's interpreter when there is no GPU.

TRITON_INTERPRET must be set before triton is first imported, which is why this happens here, before any
test module imports rope_triton.
"""

import os
import sys

import torch

if not torch.cuda.is_available():
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("triton was imported before tests/conftest.py could set TRITON_INTERPRET=1")
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture
def device() -> torch.device:
    """Where the kernel tests run: the GPU when there is one, else the CPU (interpreter)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(params=["interpreter", "cpu-path"])
def cpu_modes(request, monkeypatch):
    """Both ways a CPU tensor can go: the kernel's path (the interpreter here; on a GPU machine CPU
    tensors take the CPU path either way) and the CPU path of a machine without the interpreter, whose
    replay keys read the arguments before validation does."""
    if request.param == "cpu-path":
        from helpers import use_cpu_path

        use_cpu_path(monkeypatch)
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords or "large" in item.keywords:
            item.add_marker(skip)
