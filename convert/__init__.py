"""Hugging Face → vtp_jax checkpoint conversion (``vtp-convert``; see :mod:`convert.core`).

Public API: :func:`convert` (``convert(hf_dir, out_dir, *, dtype, force, allow_pickle, allow_nonfinite, progress,
inflight_bytes, notify, on_early_signal)``), :class:`ConversionError`, and :func:`convert.cli.main` (the console
script). No torch import except when reading pickled weights with ``allow_pickle=True``.

Both names are imported on first use (module ``__getattr__``), so ``python -m convert.cli`` installs its signal
handlers before the converter's imports run.
"""

__all__ = ["ConversionError", "convert"]


def __getattr__(name: str):
    if name in __all__:
        from convert import core

        return getattr(core, name)
    raise AttributeError(f"module 'convert' has no attribute {name!r}")
