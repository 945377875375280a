"""Backward-compatible shim: the testbed trainer moved to :mod:`vtp_jax.training.testbed` (``vtp-train-testbed`` is
:func:`vtp_jax.training.testbed.cli.main`).

Kept only for modules that still import this path and are not the trainer's to change: ``vtp_jax/demo.py``,
``vtp_jax/testbed/order_ablation.py``, ``tests/test_frontend_bad_input.py`` and ``tests/test_order_ablation.py``.
New code imports :mod:`vtp_jax.training.testbed` (and its ``cli``) instead; delete this module once those have moved.
"""

from vtp_jax.training.testbed import (  # noqa: F401
    FAMILIES, GENERATION, SUBSET_N, TEST_SEED, Encoder, generate_answers, normalise, read_record, shapes_image_size,
    testbed_generator,
)
from vtp_jax.training.testbed.cli import _parser, main  # noqa: F401
