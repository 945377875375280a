"""Evaluation tasks: lists of :class:`Record` (one image, one question, gold answers, a metric), lmms-eval style.

Two sources, picked by :func:`load_task`'s spec:

* ``"shapes"`` — the synthetic shapes VQA of :mod:`vtp_jax.testbed.shapes` (``make_split(split, n, seed)``),
  imported only when asked for. Each example becomes a record with its one answer; the metric is ``"yes_no"`` when
  the answer is yes/no and ``"exact_match"`` otherwise; ``kind`` is kept.
* ``"shapes-describe"`` — the same scenes, each asked :data:`shapes.DESCRIBE` ("Describe the image."); the gold
  answer is :func:`shapes.describe` ("red circle top left, blue square centre"), scored with ``"item_f1"`` (F1 over
  the comma-separated items). The multi-token answer exercises methods that act during decoding (DyRate).
* ``"jsonl:PATH"`` — one JSON object per line::

      {"image": "imgs/0.png", "question": "What colour is the square?", "answer": "red", "metric": "exact_match"}
      {"image": "imgs/1.png", "question": "How many?", "answers": ["2", "2", "two", …], "metric": "vqa", "id": "q1"}
      {"image": "imgs/2.png", "question": "Which shape?", "choices": ["circle", "square"], "answer": "B",
       "metric": "multiple_choice"}

  ``image``: a path relative to the JSONL file's folder (or absolute); ``question``: non-empty text; ``answer``
  (one string) or ``answers`` (a non-empty list of strings), not both; ``metric``: one of
  :data:`eval.metrics.METRICS`; ``choices``: the option texts (required for, and only allowed with,
  ``multiple_choice``; the answer is a letter or an option's text); ``id`` (optional, unique; default
  ``"<file name>:<line>"``); ``kind`` (optional label for per-kind breakdowns). Other keys are kept in
  ``Record.meta``. Blank lines are skipped. Any bad line raises :class:`TaskError` naming the file and line.

Multiple-choice prompts list the options and ask for the letter (LLaVA's MMBench prompt, see
:meth:`Record.prompt`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from eval import metrics

MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
SHAPES_DEFAULT_N = 100  # records generated for "shapes" when no n / --limit is given


class TaskError(ValueError):
    """A task that cannot be loaded: unknown spec, unreadable file, bad JSONL record (file and line named)."""


@dataclasses.dataclass
class Record:
    """One evaluation item.

    Exactly one of ``image_path`` (a file) / ``image`` (a ``PIL.Image``) is set. ``answers``: accepted gold answers
    (≥ 1). ``metric``: one of :data:`eval.metrics.METRICS`. ``choices``: option texts for "multiple_choice", else
    None. ``id``: unique within the task. ``kind``: optional category label; ``meta``: any extra fields.
    """

    question: str
    answers: list[str]
    metric: str
    id: str
    image_path: str | None = None
    image: Any = None
    choices: list[str] | None = None
    kind: str | None = None
    meta: dict = dataclasses.field(default_factory=dict)

    def load_image(self, *, max_pixels: int | None = None):
        """The image as an 8-bit RGB ``PIL.Image`` (any PIL mode scaled, not clipped:
        :func:`vtp_jax.processing.to_rgb`). ``max_pixels``: the pixel limit of image files (default PIL's
        ``Image.MAX_IMAGE_PIXELS``; ``vtp-eval --max-image-pixels``), see :func:`vtp_jax.processing.load_image`.
        Raises :class:`vtp_jax.processing.InputError` (a ValueError) for a missing or unreadable file or one over
        the limit."""
        from vtp_jax.processing import load_image, to_rgb

        if self.image is not None:
            return to_rgb(self.image)
        return load_image(self.image_path, max_pixels=max_pixels)

    def prompt(self, post_prompt: str = "") -> str:
        """The question sent to the model. Multiple choice: the question, the lettered options one per line
        ("A. circle"), then :data:`MC_INSTRUCTION`. ``post_prompt`` (e.g. "Answer with one word.") is appended
        on a new line when non-empty."""
        text = self.question
        if self.metric == "multiple_choice" and self.choices:
            letters = metrics.option_letters(len(self.choices))
            options = "\n".join(f"{letter}. {c}" for letter, c in zip(letters, self.choices))
            text = f"{text}\n{options}\n{MC_INSTRUCTION}"
        return f"{text}\n{post_prompt}" if post_prompt else text


def load_task(spec: str, *, split: str = "test", n: int | None = None, seed: int = 0) -> list[Record]:
    """Records of the task named by ``spec``: ``"shapes"`` or ``"jsonl:PATH"``.

    split / n / seed: passed to the shapes generator (n defaults to :data:`SHAPES_DEFAULT_N`); for JSONL, ``n``
    keeps the first n records and split / seed are unused. Raises TaskError for an unknown spec, a missing
    shapes module, an unreadable file or a bad record.
    """
    if n is not None and n < 1:
        raise TaskError(f"the number of records must be ≥ 1, got {n}")
    if spec in ("shapes", "shapes-describe"):
        return _load_shapes(split, SHAPES_DEFAULT_N if n is None else n, seed, describe=spec == "shapes-describe")
    if spec.startswith("jsonl:"):
        records = load_jsonl(spec[len("jsonl:"):])
        return records if n is None else records[:n]
    raise TaskError(f"unknown task {spec!r} (use 'shapes', 'shapes-describe' or 'jsonl:PATH')")


def _load_shapes(split: str, n: int, seed: int, describe: bool = False) -> list[Record]:
    import importlib

    try:
        shapes = importlib.import_module("vtp_jax.testbed.shapes")
    except ImportError as e:
        raise TaskError(f"task 'shapes' needs vtp_jax.testbed.shapes, which cannot be imported: {e}") from None
    try:
        examples = shapes.make_split(split, n, seed)
    except (KeyError, ValueError) as e:
        raise TaskError(f"shapes split {split!r} (n={n}, seed={seed}): {e}") from None
    records = []
    for i, ex in enumerate(examples):
        if describe:  # the same scenes, asked for their full description (a multi-token answer)
            records.append(Record(question=shapes.DESCRIBE, answers=[shapes.describe(ex.scene)], metric="item_f1",
                                  id=f"shapes-describe-{split}-{seed}-{i}", image=ex.image, kind="describe"))
            continue
        answer = str(ex.answer)
        metric = "yes_no" if metrics.normalize_answer(answer) in ("yes", "no") else "exact_match"
        records.append(Record(question=ex.question, answers=[answer], metric=metric, id=f"shapes-{split}-{seed}-{i}",
                              image=ex.image, kind=getattr(ex, "kind", None)))
    if not records:
        raise TaskError(f"shapes split {split!r} produced no examples")
    return records


_KNOWN_KEYS = {"image", "question", "answer", "answers", "metric", "choices", "id", "kind"}


def load_jsonl(path: str) -> list[Record]:
    """Reads a JSONL task file (format in the module docstring). Image files are checked to exist (not decoded).

    Raises TaskError ("PATH:LINE: what is wrong") for a missing file, invalid JSON, a missing or mistyped key,
    an unknown metric, a missing image file, a duplicate id, gold answers the metric cannot use, or no records.
    """
    if not path:
        raise TaskError("jsonl: needs a path, e.g. jsonl:data/task.jsonl")
    if not os.path.isfile(path):
        raise TaskError(f"task file not found: {path}")
    base = os.path.dirname(os.path.abspath(path))
    records: list[Record] = []
    seen: dict[str, int] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.readlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TaskError(f"cannot read task file {path}: {e}") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        rec = _parse_record(line, where, base, default_id=f"{os.path.basename(path)}:{lineno}")
        if rec.id in seen:
            raise TaskError(f"{where}: duplicate id {rec.id!r} (first on line {seen[rec.id]})")
        seen[rec.id] = lineno
        records.append(rec)
    if not records:
        raise TaskError(f"task file {path} holds no records")
    return records


def _parse_record(line: str, where: str, base: str, default_id: str) -> Record:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise TaskError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise TaskError(f"{where}: expected a JSON object, got {type(obj).__name__}")

    def text(key: str, required: bool = True) -> str | None:
        if key not in obj:
            if required:
                raise TaskError(f"{where}: missing key {key!r}")
            return None
        v = obj[key]
        if not isinstance(v, str) or not v.strip():
            raise TaskError(f"{where}: {key!r} must be a non-empty string, got {v!r}")
        return v

    image, question, metric = text("image"), text("question"), text("metric")
    if metric not in metrics.METRICS:
        raise TaskError(f"{where}: unknown metric {metric!r} (known: {', '.join(metrics.METRICS)})")
    if ("answer" in obj) == ("answers" in obj):
        raise TaskError(f"{where}: give exactly one of 'answer' (a string) or 'answers' (a list of strings)")
    if "answer" in obj:
        answers = [text("answer")]
    else:
        answers = obj["answers"]
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            raise TaskError(f"{where}: 'answers' must be a non-empty list of non-empty strings, got {answers!r}")
    choices = obj.get("choices")
    if metric == "multiple_choice":
        if not isinstance(choices, list) or not all(isinstance(c, str) and c.strip() for c in choices):
            raise TaskError(f"{where}: metric 'multiple_choice' needs 'choices', a list of non-empty strings")
    elif choices is not None:
        raise TaskError(f"{where}: 'choices' only go with metric 'multiple_choice' (metric is {metric!r})")
    try:  # gold answers the metric can use
        if metric == "yes_no":
            metrics.gold_yes_no(answers[0])
        elif metric == "multiple_choice":
            metrics.gold_choice(answers[0], choices)
    except metrics.MetricError as e:
        raise TaskError(f"{where}: {e}") from None
    rid = obj.get("id", default_id)
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise TaskError(f"{where}: 'id' must be a string or an integer, got {rid!r}")
    kind = text("kind", required=False)
    image_path = image if os.path.isabs(image) else os.path.join(base, image)
    if not os.path.isfile(image_path):
        raise TaskError(f"{where}: image not found: {image_path}")
    meta = {k: v for k, v in obj.items() if k not in _KNOWN_KEYS}
    return Record(question=question, answers=list(answers), metric=metric, id=str(rid), image_path=image_path,
                  choices=list(choices) if choices is not None else None, kind=kind, meta=meta)
