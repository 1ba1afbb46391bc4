"""`python -m sftkit` is the same as the `sftkit` console script."""

from sftkit.cli import main

raise SystemExit(main())
