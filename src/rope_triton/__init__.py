"""rope-triton: rotary position embedding for PyTorch, in Triton.

The public names load on first use, so that ``import rope_triton.reference`` (or ``rope_triton.angles``)
stays free of Triton and importing the package does no work.

>>> import rope_triton
>>> q_out, k_out = rope_triton.apply_rotary(q, k, cos, sin)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "apply_rotary": "rope_triton.functional",
    "qk_norm_rotary": "rope_triton.functional",
    "RotaryEmbedding": "rope_triton.modules",
    "MultiAxisRotaryEmbedding": "rope_triton.modules",
    "TritonRotary": "rope_triton.modules",
    "clear_launch_cache": "rope_triton._core.op",
    "CapturedRotary": "rope_triton.graphs",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from ._core.op import clear_launch_cache  # noqa: F401
    from .functional import apply_rotary, qk_norm_rotary  # noqa: F401  (for type checkers: lazy exports)
    from .graphs import CapturedRotary  # noqa: F401
    from .modules import MultiAxisRotaryEmbedding, RotaryEmbedding, TritonRotary  # noqa: F401


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        # Bound here once: later lookups (``rope_triton.apply_rotary`` on every decode step) are plain
        # attribute reads, not a call of this function and of import_module.
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rope_triton' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
