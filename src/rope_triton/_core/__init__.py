"""The op, layer by layer: ``checks`` (validation into one :class:`~.checks.Problem`) -> ``op`` (autograd,
``torch.library`` registration, the CPU path of ``cpu``) -> ``launch`` (grid, block sizes, replays) ->
``kernels`` (the one ``@triton.jit`` kernel). ``operands`` carries a call's tensors down the layers;
``layouts`` names the tensor layouts for all of them and for the reference."""
