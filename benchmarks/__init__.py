"""sftkit's side-by-side benchmark harness: `python benchmarks/run.py` or `make bench`."""
