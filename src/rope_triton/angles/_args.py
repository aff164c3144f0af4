"""Argument checks shared by the angle modules: every error names the offending key."""

import math

import torch


def _is_bool(x) -> bool:
    # bool is an int subclass; `factor=True` is a config bug, not the number 1.
    return isinstance(x, bool) or (isinstance(x, torch.Tensor) and x.dtype == torch.bool)


def _as_int(x, name: str) -> int:
    if _is_bool(x) or isinstance(x, (str, bytes)) or not hasattr(x, "__index__"):
        raise ValueError(f"{name} must be an integer, got {x!r}")
    try:
        return int(x.__index__())
    except (TypeError, RuntimeError) as err:  # e.g. a float tensor or a multi-element tensor
        raise ValueError(f"{name} must be an integer, got {x!r}") from err


def _positive_int(x, name: str) -> int:
    value = _as_int(x, name)
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {x!r}")
    return value


def _as_real(x, name: str) -> float:
    if _is_bool(x) or isinstance(x, (str, bytes)) or not hasattr(x, "__float__"):
        raise ValueError(f"{name} must be a real number, got {x!r}")
    try:
        value = float(x)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be a real number, got {x!r}") from err
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {x!r}")
    return value
