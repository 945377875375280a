"""The one error type of ``vtp-bench``'s settings checks (the bottom of :mod:`eval.bench`: it imports nothing)."""

from __future__ import annotations


class BenchError(ValueError):
    """Bad benchmark settings (reported as ``vtp-bench: error: ...``, exit code 2)."""
