"""Frequency and scaling math for RoPE, in float64, with no Triton.

- :mod:`.rope_types`: inverse frequencies and attention factor of each ``rope_type`` (default, linear,
  dynamic NTK, YaRN, LongRoPE, Llama 3, proportional).
- :mod:`.hf_config`: reading a Hugging Face transformers config into those arguments.
- :mod:`.tables`: cos/sin tables, split tables and the fixed-point frequency table the kernel computes from.
- :mod:`.multi_axis`: multi-axis RoPE (M-RoPE, 2-D vision, N-D diffusion): per-pair axis ids and
  frequencies (:class:`MultiAxis`) and their angles (``multi_axis_angles``; ``angles`` is the 1-D one).

>>> from rope_triton.angles import inv_freq_and_scale, cos_sin_tables
>>> inv_freq, scale = inv_freq_and_scale(64, base=10000.0)
>>> cos, sin = cos_sin_tables(inv_freq, 128, attention_factor=scale)
>>> cos.shape
torch.Size([128, 32])
"""

from .fixed_point import FREQ_MAX_POSITION
from .hf_config import parse_hf_config
from .multi_axis import MultiAxis, flux, from_hf_config, hunyuan_video, mrope, nd_rope, vision_2d, wan
from .multi_axis import angles as multi_axis_angles
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
    "MultiAxis",
    "ROPE_TYPES",
    "angles",
    "cos_sin_tables",
    "default_low_bits",
    "freq_table",
    "freq_table_angles",
    "freq_table_factor",
    "flux",
    "from_hf_config",
    "hunyuan_video",
    "inv_freq_and_scale",
    "mrope",
    "multi_axis_angles",
    "nd_rope",
    "parse_hf_config",
    "rope_type_of",
    "seed_inv_freq",
    "split_tables",
    "vision_2d",
    "wan",
]
