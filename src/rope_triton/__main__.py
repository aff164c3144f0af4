"""``python -m rope_triton``: the ``rope-triton`` command line."""

from .bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
