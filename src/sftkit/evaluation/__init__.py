"""Evaluation: objective metrics against reference answers, and (later) an LLM judge."""
