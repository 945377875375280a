"""Evaluation and benchmarking tools for vtp_jax (``vtp-bench``: :mod:`eval.bench`)."""
