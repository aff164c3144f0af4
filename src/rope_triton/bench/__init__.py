"""``rope-triton bench`` and ``rope-triton precision``: check and time rope-triton against its peers.

Installed with the package, never imported by the op. ``run`` drives a benchmark, ``shapes`` holds the
workloads, ``providers`` the implementations compared, ``report`` the tables, CSV/JSON and plot, and
``precision`` the long-context error report. ``cli`` is the ``rope-triton`` command.
"""
