"""Evaluation of a testbed through OUR jitted generators: exact-match accuracy of greedy answers.

The generator of a family is chosen by its kind (``Family.kind``, :data:`GENERATORS`): the autoregressive one
(:class:`~vtp_jax.generation.autoregressive.AutoregressiveGenerator`) or the masked-diffusion one
(:class:`~vtp_jax.generation.diffusion.DiffusionGenerator`, with the :class:`DiffusionConfig` ``vtp-generate`` would
build). Answers are compared after :func:`normalise` (strip, lower case, trailing punctuation dropped); a prediction
is right only if it equals the answer exactly.
"""

from __future__ import annotations

import numpy as np

from vtp_jax import families
from vtp_jax.testbed import shapes
from vtp_jax.training.testbed.corpus import normalise, shapes_image_size
from vtp_jax.training.testbed.recording import read_record
from vtp_jax.training.testbed.settings import GENERATION, SUBSET_N, TEST_SEED


def diffusion_config(processor, cfg, settings: dict | None = None):
    """The :class:`DiffusionConfig` ``vtp-generate`` would build for this checkpoint (:func:`runtime.diffusion_config`)
    with ``settings`` (default :data:`GENERATION` of ``cfg.family``)."""
    from vtp_jax.runtime import diffusion_config as runtime_config

    s = {**GENERATION[cfg.family], **(settings or {})}
    return runtime_config(cfg, processor, gen_length=s["gen_length"], block_length=s["block_length"],
                          steps=s["steps"], remasking=s["remasking"], cfg_scale=s["cfg"])


def _autoregressive_generator(model, processor, settings: dict, method):
    from vtp_jax.generation.autoregressive import AutoregressiveGenerator

    return AutoregressiveGenerator(model, method)


def _diffusion_generator(model, processor, settings: dict, method):
    from vtp_jax.generation.diffusion import DiffusionGenerator

    return DiffusionGenerator(model, diffusion_config(processor, model.cfg, settings), method)


def _autoregressive_answers(generator, processor, enc, settings: dict):
    from vtp_jax.runtime import eos_token_ids

    return generator.generate_arrays(
        enc.input_ids, enc.attention_mask, enc.image_inputs["pixel_values"],
        max_new_tokens=settings["max_new_tokens"], eos_token_ids=eos_token_ids(generator.cfg, processor),
        pad_token_id=processor.pad_token_id, temperature=settings["temperature"],
    )


def _diffusion_answers(generator, processor, enc, settings: dict):
    return generator.generate_arrays(enc.input_ids, enc.attention_mask, enc.image_inputs,
                              temperature=settings["temperature"])


# generator kind → its factory (model, processor, settings, method) → generator
GENERATORS = {families.AUTOREGRESSIVE: _autoregressive_generator, families.MASKED_DIFFUSION: _diffusion_generator}


def testbed_generator(model, processor, settings: dict, method=None):
    """The family's jitted generator for a testbed model (by ``Family.kind``, :data:`GENERATORS`):
    :class:`AutoregressiveGenerator`, or :class:`DiffusionGenerator` with :func:`diffusion_config` of ``settings``;
    ``method``: a pruning method from :func:`vtp_jax.runtime.build_methods` (None: unpruned)."""
    return GENERATORS[families.get(model.cfg.family).kind](model, processor, settings, method)


def generate_answers(generator, processor, enc, settings: dict):
    """Greedy (``settings["temperature"]``) generation on one processed batch ``enc`` with a
    :func:`testbed_generator` → (decoded texts, one per row; the generator's result, e.g. its ``kept`` indices).
    Autoregressive: stops at :func:`vtp_jax.runtime.eos_token_ids` or ``settings["max_new_tokens"]``; masked
    diffusion: decodes with the generator's own :class:`DiffusionConfig`."""
    from vtp_jax.generation.autoregressive import AutoregressiveGenerator

    answers = _autoregressive_answers if isinstance(generator, AutoregressiveGenerator) else _diffusion_answers
    out = answers(generator, processor, enc, settings)
    return [processor.decode(row[:n]) for row, n in zip(out.tokens, out.num_new_tokens)], out


class Evaluator:
    """Exact-match accuracy of greedy generation through our jitted generators on a fixed list of examples.

    The examples are processed once (``processor(images, questions)``, batches of ``batch`` rows; a short last batch
    is filled with copies of its first row, whose answers are ignored). ``__call__(state)`` swaps ``state`` (the
    ``nnx.split`` state of a model of the same config) into the generator — no recompilation — and returns
    ``{"accuracy", "n", "per_kind", "predictions"}``.

    Args:
      model: a model of the family (its parameters are used unless a state is passed).
      generation: overrides of :data:`GENERATION` for the family.
    """

    def __init__(self, model, processor, examples, *, batch: int = 32, generation: dict | None = None):
        self.cfg = model.cfg
        self.family = self.cfg.family
        self.processor = processor
        self.examples = list(examples)
        self.settings = {**GENERATION[self.family], **(generation or {})}
        self.generator = testbed_generator(model, processor, self.settings)
        self.batches = []
        for start in range(0, len(self.examples), batch):
            chunk = self.examples[start:start + batch]
            fill = chunk + [chunk[0]] * (batch - len(chunk)) if len(self.examples) > batch else chunk
            self.batches.append((len(chunk), processor([e.image for e in fill], [e.question for e in fill])))

    def __call__(self, state=None) -> dict:
        """Scores the examples; ``state``: the full ``nnx.split`` state of a same-config model (None: keep)."""
        if state is not None:
            self.generator.state = state
        texts = []
        for n, enc in self.batches:
            texts += generate_answers(self.generator, self.processor, enc, self.settings)[0][:n]
        return score(self.examples, texts)


def score(examples, texts) -> dict:
    """Exact-match accuracy overall and per kind, plus the predictions."""
    right = [normalise(t) == normalise(e.answer) for e, t in zip(examples, texts, strict=True)]
    per_kind = {}
    for kind in shapes.KINDS:
        hits = [r for r, e in zip(right, examples) if e.kind == kind]
        if hits:
            per_kind[kind] = {"accuracy": float(np.mean(hits)), "n": len(hits)}
    return {
        "accuracy": float(np.mean(right)) if right else float("nan"),
        "n": len(right),
        "correct": int(sum(right)),
        "per_kind": per_kind,
        "predictions": [normalise(t) for t in texts],
    }


def testset_examples(n: int, size: int) -> list:
    """The first ``n`` examples of the test split (seed :data:`TEST_SEED`)."""
    return shapes.make_split("test", n, TEST_SEED, size=size)


def evaluate_converted(converted_dir: str, n: int = SUBSET_N, *, batch: int | None = None) -> dict:
    """Loads a converted testbed checkpoint and scores it on the first ``n`` test examples (one batch of ``n`` rows
    unless ``batch`` is given) with the recorded generation settings. Returns :func:`score`'s dict."""
    from vtp_jax import checkpoint
    from vtp_jax.processing import load_processor

    model, cfg, _ = checkpoint.load(converted_dir)
    processor = load_processor(converted_dir, cfg)
    record = read_record(converted_dir)
    examples = testset_examples(n, shapes_image_size(cfg))
    return Evaluator(model, processor, examples, batch=batch or n, generation=record.get("generation"))()
