"""The format of :func:`rope_triton.angles.freq_table` (and :meth:`MultiAxis.freq_table`), shared by its
builder and the kernel that reads it.

Positions are split into ``FREQ_CHUNK_BITS``-bit chunks; a pair's angle in turns is held in fixed point with
``FREQ_FRAC_BITS`` fraction bits, one row per chunk (the turns of ``2**(c * FREQ_CHUNK_BITS)`` positions),
then a row holding the attention factor's float32 bits. Chunk x row products stay below 2**60 and their
sum below 2**62: exact in int64.
"""

FREQ_CHUNK_BITS = 12
FREQ_CHUNKS = 3  # positions below 2**31 (36 bits of chunks)
FREQ_FRAC_BITS = 48
FREQ_ROWS = FREQ_CHUNKS + 1  # the chunk rows, then the attention factor
# Multi-axis tables add a row: the position axis of each pair (positions then have a leading axis dim).
FREQ_AXIS_ROW = FREQ_ROWS
# The kernel's bound check is pos < FREQ_MAX_POSITION + 1, an int32 argument: torch 2.11's inductor fails on
# int arguments past int32 (expr_fits_within_32bit on a Python int).
FREQ_MAX_POSITION = 2**31 - 2
