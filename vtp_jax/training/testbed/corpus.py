"""The text side of the shapes task: the tokenizer corpus and tokenizer, and the training conversations.

* :func:`train_shapes_tokenizer` — the family builder's byte-level BPE tokenizer, retrained (same pipeline, special
  tokens and settings) on :func:`tokenizer_corpus`: the builder's built-in corpus followed by ``CORPUS_REPEATS``
  copies of every shapes question and answer and of the chat templates' plain text, so that each answer is one
  token. The corpus is passed to the tokenizer trainer explicitly; no module's globals are touched.
* :func:`make_conversation` — a shapes example → a multi-turn :class:`Conversation` (the questions about one scene,
  optionally restricted to some question kinds, optionally ending with the description turn).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Iterator

import numpy as np

from vtp_jax.testbed import shapes
from vtp_jax.training.testbed.settings import CORPUS_REPEATS, TEMPLATE_LINES, VOCAB_SIZE, TrainError

# The BPE trainer setting of the testbed builders' ``train_tokenizer`` that a retrain must repeat (the others — vocab
# size, special tokens, initial alphabet — come with the tokenizer). tests/test_testbed_train.py checks that a
# retrain on the builder's own corpus gives the builder's tokenizer, so a change there cannot go unnoticed.
BPE_MIN_FREQUENCY = 2


def normalise(text: str) -> str:
    """Answer comparison form: stripped, lower case, trailing ``.!?`` removed."""
    return text.strip().lower().rstrip(".!?").strip()


# Qwen2.5-VL has no fixed input size (dynamic resolution): images of this many merged units per side (8 × 8 = 64
# visual tokens), a multiple of patch · merge, which the processor keeps as they are inside its pixel bounds.
DYNAMIC_RESOLUTION_UNITS = 8


def shapes_image_size(cfg) -> int:
    """The rendered image size: the model's input size (LLaVA) / tile size (LLaDA-V), so preprocessing is 1:1; for a
    dynamic-resolution tower (Qwen2.5-VL: no ``image_size``) ``patch · merge · DYNAMIC_RESOLUTION_UNITS`` pixels."""
    v = cfg.vision
    if getattr(v, "image_size", None) is None:
        return int(v.patch_size * v.spatial_merge_size * DYNAMIC_RESOLUTION_UNITS)
    return int(v.image_size)


def shapes_image_marker() -> str:
    """The ``<image>`` marker of prompts written as text."""
    from vtp_jax.processing import IMAGE_TOKEN

    return IMAGE_TOKEN


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------------------


def tokenizer_corpus(builtin: Iterable[str]) -> Iterator[str]:
    """``builtin`` (a builder's built-in corpus), then ``CORPUS_REPEATS`` copies of :func:`shapes.corpus` and of the
    chat templates' plain-text scaffolding (:data:`TEMPLATE_LINES`)."""
    yield from builtin
    extra = list(shapes.corpus()) + list(TEMPLATE_LINES)
    for _ in range(CORPUS_REPEATS):
        yield from extra


def retrain_tokenizer(tokenizer, lines: Iterable[str], vocab_size: int):
    """``tokenizer`` (a fast tokenizer of a testbed builder) retrained on ``lines``: the same pre-tokenizer,
    decoder, special tokens (same ids), wrapper settings and chat template, a BPE model learnt from ``lines`` with
    the builders' settings (:data:`BPE_MIN_FREQUENCY`). Deterministic."""
    return tokenizer.train_new_from_iterator(list(lines), vocab_size, min_frequency=BPE_MIN_FREQUENCY,
                                             show_progress=False)


def train_shapes_tokenizer(family: str, vocab_size: int = VOCAB_SIZE):
    """The family's ``train_tokenizer(vocab_size)`` on the built-in corpus plus the shapes questions and answers
    (:func:`tokenizer_corpus`). Raises TrainError for a family without a testbed builder."""
    from vtp_jax.training.testbed.builders import testbed_builder

    builder = testbed_builder(family)
    return retrain_tokenizer(builder.base_tokenizer(vocab_size), tokenizer_corpus(builder.builtin_corpus()),
                             vocab_size)


# ---------------------------------------------------------------------------------------------------------------------
# Conversations
# ---------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Conversation:
    """One training sample: an image and its (question, answer) turns; the image belongs to the first turn."""

    image: Any
    turns: tuple[tuple[str, str], ...]


def make_conversation(example, rng: np.random.Generator, max_turns: int, describe: float,
                      kinds: tuple[str, ...] | None = None, first_kind: str | None = None) -> Conversation | None:
    """The example's question first, then up to ``max_turns − 1`` other distinct questions about the same scene
    (drawn with :func:`shapes.make_questions`, random order), then — with probability ``describe`` — the description
    turn (last, so it cannot give away the answers of the questions before it).

    ``kinds`` (a subset of ``shapes.KINDS``; None = all) restricts the question turns to those kinds — a curriculum
    stage such as ``("location", "position")``. If the example's own question is of another kind, a question of an
    allowed kind about the same scene replaces it; if the scene has none (e.g. ``("position",)`` for a scene without
    two distinguishable objects in different columns), the result is None and the caller draws another example.

    ``first_kind`` (optional) fixes the kind of the first question the same way: the example's own question if it is
    of that kind, else a question of that kind about the same scene, else None. The trainer draws it per row with
    ``--kind-weights`` and, on None, draws a kind afresh for the next example — so the training mix is the weights
    times each kind's askable rate, renormalised (e.g. part 5's position weight 3.5 of 8.5 gave 35% of the questions).

    Raises:
      TrainError: an unknown kind in ``kinds``, or a ``first_kind`` outside them.
    """
    if kinds is not None and not set(kinds) <= set(shapes.KINDS):
        raise TrainError(f"unknown question kinds {sorted(set(kinds) - set(shapes.KINDS))} "
                         f"(choose from {', '.join(shapes.KINDS)})")
    allowed = set(shapes.KINDS if kinds is None else kinds)
    if first_kind is not None and first_kind not in allowed:
        raise TrainError(f"first question kind {first_kind!r} is not among the allowed kinds {sorted(allowed)}")
    first_kinds = allowed if first_kind is None else {first_kind}
    others: dict[str, shapes.QA] = {}  # question text → QA, in first-drawn order
    for _ in range(-(-max_turns // len(shapes.KINDS)) + 1):  # enough draws for max_turns distinct questions
        for qa in shapes.make_questions(example.scene, rng):
            if qa.question != example.question and qa.kind in allowed:
                others.setdefault(qa.question, qa)
    questions = list(others)
    if example.kind in first_kinds:
        turns = [(example.question, example.answer)]
    else:  # a question of an allowed kind about the same scene takes the example's place
        candidates = [q for q in questions if others[q].kind in first_kinds]
        if not candidates:  # no question of such a kind can be asked about this scene
            return None
        first = candidates[int(rng.integers(len(candidates)))]
        questions.remove(first)
        turns = [(first, others[first].answer)]
    for j in rng.permutation(len(questions))[: max_turns - 1]:
        turns.append((questions[j], others[questions[j]].answer))
    if rng.random() < describe:
        turns.append((shapes.DESCRIBE, shapes.describe(example.scene)))
    return Conversation(example.image, tuple(turns))


def conversation_stream(stream, rng: np.random.Generator, *, max_turns: int, describe: float,
                        kinds: tuple[str, ...] | None = None,
                        kind_weights: dict | None = None) -> Iterator[Conversation]:
    """Endless training conversations from ``stream`` (shapes examples): :func:`make_conversation` of each example,
    scenes without a question of the requested kind skipped. ``kind_weights`` ({kind: weight}): the first
    question's kind is drawn with these relative weights for each conversation (afresh after a skipped scene)."""
    if kind_weights:
        weighted = sorted(kind_weights)
        weights = np.asarray([kind_weights[k] for k in weighted], np.float64)
        weights /= weights.sum()
    while True:
        first = weighted[int(rng.choice(len(weighted), p=weights))] if kind_weights else None
        conv = make_conversation(next(stream), rng, max_turns, describe, kinds, first_kind=first)
        if conv is not None:
            yield conv
