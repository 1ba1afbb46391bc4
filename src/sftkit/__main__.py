"""`python -m sftkit` is the same as the `sftkit` console script."""

from sftkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
