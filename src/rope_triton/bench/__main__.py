"""``python -m rope_triton.bench``: the benchmark's own command line."""

from .run import main

if __name__ == "__main__":
    raise SystemExit(main())
