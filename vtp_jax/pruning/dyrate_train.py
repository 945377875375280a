"""Backward-compatible shim: the DyRate predictor trainer moved to :mod:`vtp_jax.training.dyrate`
(``vtp-train-dyrate`` is :func:`vtp_jax.training.dyrate.main`); the predictor itself stays in
:mod:`vtp_jax.pruning.dyrate`.

Kept only for tests that still import this path and are not the trainer's to change
(``tests/test_frontend_bad_input.py``, ``tests/test_damaged_files.py``). Nothing in :mod:`vtp_jax.pruning` imports
it (``import vtp_jax.pruning`` never loads training code); delete it once those tests import the new path.
"""

from vtp_jax.training.dyrate import main  # noqa: F401
