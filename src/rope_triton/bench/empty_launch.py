"""A Triton kernel that does nothing: the benchmark times its launch as the host cost of a Triton call."""

import triton


@triton.jit
def noop_kernel(X):
    pass
