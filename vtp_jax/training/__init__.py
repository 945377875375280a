"""Training code: the front ends that fit parameters, above the library they train.

* :mod:`vtp_jax.training.testbed` — ``vtp-train-testbed``: a tiny VLM of either family trained on the synthetic
  shapes VQA task and exported as a Hugging Face-format checkpoint (corpus and batches, losses and the loop, export,
  evaluation and recording, the CLI — one module each).
* :mod:`vtp_jax.training.dyrate` — ``vtp-train-dyrate``: DyRate's rate predictor
  (:class:`vtp_jax.pruning.dyrate.RatePredictor`) fitted for a converted autoregressive checkpoint.

Imports point down: training uses generation, pruning, modeling, the family registry and the testbed builders;
nothing in those imports training. The converter (the ``convert`` package, itself built on ``vtp_jax``) is passed
to the testbed trainer as a function by its CLI (:mod:`vtp_jax.training.testbed.cli`), the one module here that
imports it.
"""
