"""rope-triton: rotary position embedding for PyTorch, in Triton.

>>> import rope_triton
>>> q_out, k_out = rope_triton.apply_rotary(q, k, cos, sin)  # doctest: +SKIP
"""

from .functional import apply_rotary

__version__ = "0.1.0"

__all__ = ["__version__", "apply_rotary"]
