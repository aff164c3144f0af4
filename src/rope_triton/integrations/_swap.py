"""Reference-counted swaps of module-level functions, shared by the integrations.

A model library's layers look their rotary function up in their own module on every call, so swapping
that module attribute changes every model of the family in the process. Each patched model holds one
reference per swapped attribute; the last release puts the original back.
"""

from __future__ import annotations

import threading
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Swap:
    module: types.ModuleType
    name: str
    original: Callable
    replacement: Callable
    users: int = 0


LOCK = threading.RLock()
_SWAPS: dict[str, _Swap] = {}  # "module.function" -> swap


def acquire(module: types.ModuleType, name: str, replacement: Callable) -> str:
    """Swap ``module.name`` for ``replacement`` (or count one more user of the swap); returns the key."""
    key = f"{module.__name__}.{name}"
    with LOCK:
        swap = _SWAPS.get(key)
        if swap is None:
            swap = _SWAPS[key] = _Swap(module, name, getattr(module, name), replacement)
            setattr(module, name, replacement)
        swap.users += 1
    return key


def original(module: types.ModuleType, name: str) -> Callable | None:
    """What ``module.name`` was before it was swapped (None if it is not swapped)."""
    swap = _SWAPS.get(f"{module.__name__}.{name}")
    return None if swap is None else swap.original


def release(keys: list[str]) -> None:
    """Drop one user of each swap; the last one puts the original back (once per patched model: from
    ``unpatch``, or when the model is garbage collected)."""
    with LOCK:
        for key in keys:
            swap = _SWAPS[key]
            swap.users -= 1
            if swap.users:
                continue
            del _SWAPS[key]
            if getattr(swap.module, swap.name) is swap.replacement:
                setattr(swap.module, swap.name, swap.original)
            else:
                warnings.warn(
                    f"{key} was replaced by someone else after rope-triton patched it; left as it is",
                    stacklevel=3,
                )
