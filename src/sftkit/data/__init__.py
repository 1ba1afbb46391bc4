"""The data pipeline: records → prompt style → tokens → batches (see ARCHITECTURE.md)."""
