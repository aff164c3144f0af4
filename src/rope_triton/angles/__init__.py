"""Frequency and scaling math for RoPE, in float64, with no Triton.

- :mod:`.rope_types`: inverse frequencies and attention factor of each ``rope_type`` (default, linear,
  dynamic NTK, YaRN, LongRoPE, Llama 3, proportional).
- :mod:`.hf_config`: reading a Hugging Face transformers config into those arguments.
- :mod:`.tables`: cos/sin tables, split tables and the fixed-point frequency table the kernel computes from.

>>> from rope_triton.angles import inv_freq_and_scale, cos_sin_tables
>>> inv_freq, scale = inv_freq_and_scale(64, base=10000.0)
>>> cos, sin = cos_sin_tables(inv_freq, 128, attention_factor=scale)
>>> cos.shape
torch.Size([128, 32])
"""

from .fixed_point import FREQ_MAX_POSITION
from .hf_config import parse_hf_config
from .rope_types import ROPE_TYPES, inv_freq_and_scale, rope_type_of, seed_inv_freq
from .tables import (
    angles,
    cos_sin_tables,
    default_low_bits,
    freq_table,
    freq_table_angles,
    freq_table_factor,
    split_tables,
)

__all__ = [
    "FREQ_MAX_POSITION",
    "ROPE_TYPES",
    "angles",
    "cos_sin_tables",
    "default_low_bits",
    "freq_table",
    "freq_table_angles",
    "freq_table_factor",
    "inv_freq_and_scale",
    "parse_hf_config",
    "rope_type_of",
    "seed_inv_freq",
    "split_tables",
]
