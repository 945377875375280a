"""Hugging Face → vtp_jax checkpoint conversion (``vtp-convert``; see :mod:`convert.core`).

Public API: :func:`convert` (``convert(hf_dir, out_dir, *, dtype, force, allow_pickle, progress)``),
:class:`ConversionError`, and :func:`convert.cli.main` (the console script). No torch import except when reading
pickled weights with ``allow_pickle=True``.
"""

from convert.core import ConversionError, convert

__all__ = ["ConversionError", "convert"]
