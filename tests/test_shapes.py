"""The synthetic shapes VQA generator (vtp_jax.testbed.shapes): determinism, answers re-derived from the scene by an
independent reading of each question, renderer/scene agreement, seeds and splits."""

from __future__ import annotations

import collections
import hashlib
import re

import numpy as np
import pytest

from vtp_jax.testbed import shapes

N = 300  # examples per split checked below


def _image_hash(image) -> str:
    return hashlib.sha1(np.asarray(image).tobytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# An independent answer key: parses the question text and reads the scene's object list (never the renderer, never
# make_questions). Column/row names are spelled out here on purpose rather than imported.
# ---------------------------------------------------------------------------------------------------------------------

_ROWS = {"top": 0, "middle": 1, "bottom": 2}
_COLS = {"left": 0, "middle": 1, "right": 2}


def _cell_of_place(place: str) -> tuple[int, int]:
    if place == "centre":
        return (1, 1)
    row, col = place.split(" ")
    return (_ROWS[row], _COLS[col])


def reference_answer(scene: shapes.Scene, question: str) -> tuple[str, str]:
    """(kind, answer) for ``question`` about ``scene``; asserts the question is unambiguous."""
    objs = [(o.shape, o.colour, o.cell) for o in scene.objects]
    if m := re.fullmatch(r"What colour is the (\w+)\?", question):
        hits = [c for s, c, _ in objs if s == m[1]]
        assert len(hits) == 1, f"ambiguous colour question {question!r}: {objs}"
        return "colour", hits[0]
    if m := re.fullmatch(r"How many (\w+)s are there\?", question):
        return "count", str(sum(s == m[1] for s, _, _ in objs))
    if m := re.fullmatch(r"Is there a (\w+) (\w+)\?", question):
        return "presence", "yes" if any(c == m[1] and s == m[2] for s, c, _ in objs) else "no"
    if m := re.fullmatch(r"Is the (\w+) (\w+) left of the (\w+) (\w+)\?", question):
        a = [cell for s, c, cell in objs if c == m[1] and s == m[2]]
        b = [cell for s, c, cell in objs if c == m[3] and s == m[4]]
        assert len(a) == 1 and len(b) == 1, f"ambiguous position question {question!r}: {objs}"
        assert a[0][1] != b[0][1], f"same column in {question!r}: {objs}"
        return "position", "yes" if a[0][1] < b[0][1] else "no"
    if m := re.fullmatch(r"What shape is in the (.+)\?", question):
        cell = _cell_of_place(m[1])
        hits = [s for s, _, c in objs if c == cell]
        assert len(hits) == 1, f"location question about an empty cell {question!r}: {objs}"
        return "location", hits[0]
    raise AssertionError(f"unknown question template {question!r}")


@pytest.fixture(scope="module")
def splits():
    return {s: shapes.make_split(s, N, seed=0) for s in ("train", "val", "test")}


def test_answers_agree_with_independent_key(splits):
    for split, examples in splits.items():
        for ex in examples:
            kind, answer = reference_answer(ex.scene, ex.question)
            assert (kind, answer) == (ex.kind, ex.answer), (split, ex.question, ex.scene)


def test_every_question_of_every_scene_agrees(splits):
    """make_questions' full output (not just the question make_split picked) matches the key."""
    rng = np.random.default_rng(0)
    for ex in splits["train"][:100]:
        for qa in shapes.make_questions(ex.scene, rng):
            assert reference_answer(ex.scene, qa.question) == (qa.kind, qa.answer)


def test_answers_are_single_words_from_the_vocabulary(splits):
    vocab = set(shapes.answers())
    for ex in splits["train"]:
        assert ex.answer in vocab and " " not in ex.answer


def test_mix_of_kinds_and_answers(splits):
    examples = [e for s in splits.values() for e in s]
    kinds = collections.Counter(e.kind for e in examples)
    assert set(kinds) == set(shapes.KINDS)
    assert min(kinds.values()) > 0.08 * len(examples), kinds
    yes_no = collections.Counter(e.answer for e in examples if e.kind in ("presence", "position"))
    assert abs(yes_no["yes"] - yes_no["no"]) < 0.2 * sum(yes_no.values()), yes_no
    for kind in ("colour", "location"):
        assert len({e.answer for e in examples if e.kind == kind}) >= 3


def test_scenes_are_well_formed(splits):
    for ex in splits["train"]:
        scene = ex.scene
        assert scene.background in shapes.BACKGROUNDS
        assert 1 <= len(scene.objects) <= shapes.MAX_OBJECTS
        cells = [o.cell for o in scene.objects]
        assert len(set(cells)) == len(cells)
        for o in scene.objects:
            assert o.shape in shapes.SHAPES and o.colour in shapes.COLOURS and o.size in shapes.SIZES
            assert all(0 <= v < shapes.GRID for v in o.cell)
            assert abs(o.dx) + o.radius <= 0.5 and abs(o.dy) + o.radius <= 0.5  # stays inside its cell
            lo, hi = shapes.RADIUS[o.size]
            assert lo <= o.radius <= hi


def test_renderer_draws_the_scene(splits):
    """Each object's centre pixel has the object's colour (nearest nominal colour), and the area of object-coloured
    pixels in its cell matches the shape's area for its radius (so the size class shows)."""
    expected = {"circle": np.pi, "square": 4 * 0.9**2, "triangle": 1.8}  # area / radius²
    size = 72
    cell = size // shapes.GRID
    for ex in splits["val"][:60]:
        img = np.asarray(shapes.render(ex.scene, size)).astype(int)
        assert img.shape == (size, size, 3)
        for o in ex.scene.objects:
            cx = int((o.cell[1] + 0.5 + o.dx) * cell)
            cy = int((o.cell[0] + 0.5 + o.dy) * cell)
            assert tuple(img[cy, cx]) == o.rgb
            nearest = min(shapes.RGB, key=lambda c: sum((a - b) ** 2 for a, b in zip(shapes.RGB[c], img[cy, cx])))
            assert nearest == o.colour
            r0, c0 = o.cell[0] * cell, o.cell[1] * cell
            patch = img[r0:r0 + cell, c0:c0 + cell]
            area = np.sum(np.all(patch == np.asarray(o.rgb), axis=-1)) / cell**2
            assert 0.7 < area / (expected[o.shape] * o.radius**2) < 1.5, (o, area)


def test_deterministic_per_seed():
    a = shapes.make_split("train", 12, seed=5)
    b = shapes.make_split("train", 12, seed=5)
    for x, y in zip(a, b):
        assert (x.question, x.answer, x.kind, x.scene) == (y.question, y.answer, y.kind, y.scene)
        assert _image_hash(x.image) == _image_hash(y.image)
    assert shapes.render(a[0].scene, 72).tobytes() == a[0].image.tobytes()


def test_prefix_and_start():
    long = shapes.make_split("test", 30, seed=0)
    assert [e.question for e in shapes.make_split("test", 10, seed=0)] == [e.question for e in long[:10]]
    tail = shapes.make_split("test", 5, seed=0, start=25)
    assert [e.scene for e in tail] == [e.scene for e in long[25:]]


def test_images_differ_across_seeds():
    a = shapes.make_split("train", 20, seed=0)
    b = shapes.make_split("train", 20, seed=1)
    assert not {_image_hash(e.image) for e in a} & {_image_hash(e.image) for e in b}
    assert [e.scene for e in a] != [e.scene for e in b]
    assert len({_image_hash(e.image) for e in a}) == len(a)


def test_splits_are_disjoint(splits):
    hashes = {s: {_image_hash(e.image) for e in ex} for s, ex in splits.items()}
    scenes = {s: {e.scene for e in ex} for s, ex in splits.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not hashes[a] & hashes[b], (a, b)
        assert not scenes[a] & scenes[b], (a, b)


def test_render_sizes_and_unknown_split():
    scene = shapes.make_split("val", 1, seed=0)[0].scene
    for size in (48, 72, 96):
        assert shapes.render(scene, size).size == (size, size)
    with pytest.raises(ValueError, match="unknown split"):
        shapes.make_split("dev", 1, seed=0)


def test_corpus_covers_every_question(splits):
    corpus = set(shapes.corpus())
    for ex in splits["train"]:
        assert ex.question in corpus
    assert set(shapes.answers()) <= corpus
