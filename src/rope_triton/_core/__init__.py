"""The op, layer by layer: ``checks`` (validation into one :class:`~.checks.Problem`) -> ``op`` (autograd,
``torch.library`` registration, the CPU path) -> ``launch`` (grid and block sizes) -> ``kernels`` (the one
``@triton.jit`` kernel). ``layouts`` names the tensor layouts for all of them and for the reference."""
