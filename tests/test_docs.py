"""The ```python blocks of the docs must run.

``README.md``: every block must run pasted alone into a fresh interpreter, so each runs in a namespace of
its own (a block that needs transformers is skipped when transformers is not installed).
``docs/tutorial.md`` tells one story: its blocks run in order, as one script sharing one namespace.
Blocks fenced any other way (```text, ```bash, ...) are not run.

On a machine without a GPU, ``tests/conftest.py`` has already set ``TRITON_INTERPRET=1``, so the blocks
run the real Triton kernel in the CPU interpreter: the docs keep their tensors tiny.
"""

from __future__ import annotations

import importlib.util
import re
import traceback
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# An opening fence "```python" (nothing else in the info string, optional indentation), the block, and a
# closing fence with the same indentation. Other languages and "```python-repl"-style tags do not match.
_BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)```python[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.DOTALL | re.MULTILINE,
)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """The ```python blocks of a Markdown text as (line number of the opening fence, code)."""
    blocks = []
    for m in _BLOCK.finditer(text):
        indent = m.group("indent")
        lines = m.group("body").splitlines()
        code = "\n".join(line[len(indent):] if line.startswith(indent) else line for line in lines)
        blocks.append((text.count("\n", 0, m.start()) + 1, code + "\n"))
    return blocks


def run_blocks(name: str, blocks: list[tuple[int, str]]) -> None:
    """Exec the blocks in order in one namespace; fail naming the block, its line and the error."""
    namespace: dict = {"__name__": f"__docs_{Path(name).stem}__"}
    for number, (line, code) in enumerate(blocks, start=1):
        try:
            exec(compile(code, f"<{name} python block {number} (line {line})>", "exec"), namespace)
        except Exception as exc:  # noqa: BLE001 - any failure of a doc example is a test failure
            tb = traceback.format_exc(limit=-3)
            pytest.fail(
                f"{name}: python block {number} of {len(blocks)} (opening fence at line {line}) raised "
                f"{type(exc).__name__}: {exc}\n{tb}",
                pytrace=False,
            )


@pytest.fixture
def isolated_torch_state():
    """Keep the examples from leaking global torch state into the rest of the suite."""
    dtype, grad = torch.get_default_dtype(), torch.is_grad_enabled()
    with torch.random.fork_rng(devices=[]):
        yield
    torch.set_default_dtype(dtype)
    torch.set_grad_enabled(grad)


def test_block_extraction():
    text = (
        "intro\n"
        "```python\nx = 1\n```\n"
        "```text\nnot code\n```\n"
        "```bash\nls\n```\n"
        "- a list item:\n\n"
        "  ```python\n  y = x + 1\n  ```\n"
        "```python\nassert y == 2\n```\n"
    )
    blocks = python_blocks(text)
    assert [code for _, code in blocks] == ["x = 1\n", "y = x + 1\n", "assert y == 2\n"]
    assert [line for line, _ in blocks] == [2, 13, 16]
    run_blocks("inline.md", blocks)


def test_failure_names_block():
    blocks = python_blocks("```python\nx = 1\n```\n\n```python\nraise ValueError('boom')\n```\n")
    with pytest.raises(pytest.fail.Exception, match=r"python block 2 of 2 \(opening fence at line 5\).*boom"):
        run_blocks("bad.md", blocks)


def test_tutorial(isolated_torch_state):
    path = ROOT / "docs" / "tutorial.md"
    assert path.is_file(), "docs/tutorial.md is missing"
    blocks = python_blocks(path.read_text(encoding="utf-8"))
    assert blocks, "docs/tutorial.md has no ```python blocks"
    run_blocks("docs/tutorial.md", blocks)


def _readme_blocks() -> list[tuple[int, str]]:
    path = ROOT / "README.md"
    return python_blocks(path.read_text(encoding="utf-8")) if path.is_file() else []


# A block importing transformers, or the drop-in that patches it.
_NEEDS_TRANSFORMERS = re.compile(
    r"^\s*(from|import)\s+(transformers|rope_triton\.integrations\.transformers)\b", re.MULTILINE
)


def test_readme_has_python_blocks():
    assert _readme_blocks(), "README.md has no ```python blocks"


@pytest.mark.parametrize("line, code", _readme_blocks(), ids=[f"line{line}" for line, _ in _readme_blocks()])
def test_readme_block_runs_alone(line, code, isolated_torch_state):
    """Each README block in a fresh namespace: it imports and defines everything it uses."""
    if _NEEDS_TRANSFORMERS.search(code) and importlib.util.find_spec("transformers") is None:
        pytest.skip("needs transformers (pip install 'rope-triton[transformers]')")
    run_blocks(f"README.md (block at line {line}, alone)", [(line, code)])
