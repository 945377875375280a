"""Synthetic visual question answering on coloured shapes ("shapes"), reproducible from a seed.

A :class:`Scene` is a 3 × 3 grid of cells over a busy, low-saturation background (grey noise, a blotchy texture or
stripes); 1–4 cells hold one solid object each (circle / square / triangle; red / green / blue / yellow; small /
large). Most of the image is background, so most visual tokens carry no information the answer needs — the regime
visual token pruning is about.

Questions are templated; every answer is a single word or digit and depends on the image:

==========  ==========================================  ======================================================
kind        template                                    answer
==========  ==========================================  ======================================================
colour      What colour is the {shape}?                 the colour (asked only of a shape that occurs once)
count       How many {shape}s are there?                "0" … "4"
presence    Is there a {colour} {shape}?                yes / no (half of them yes)
position    Is the {c1} {s1} left of the {c2} {s2}?     yes / no (both descriptions unique in the scene, the
                                                        two objects in different columns)
location    What shape is in the {place}?               the shape (asked only of an occupied cell); places:
                                                        "top left", "top middle", …, "centre", …
==========  ==========================================  ======================================================

Public API: :class:`Obj`, :class:`Scene`, :class:`QA`, :class:`Example`, :func:`make_scene`, :func:`render`,
:func:`make_questions`, :func:`make_example`, :func:`make_split`, :func:`corpus` (every question and answer text,
for tokenizer training), and the vocabularies ``SHAPES``, ``COLOURS``, ``SIZES``, ``BACKGROUNDS``, ``KINDS``,
``PLACES``.

Determinism: example ``i`` of split ``s`` with seed ``seed`` is drawn from ``np.random.default_rng([seed,
SPLIT_IDS[s], i])`` — independent of ``n``, so ``make_split(s, 24, seed)`` is a prefix of ``make_split(s, 500, seed)``
and the three splits use disjoint random streams. The rendered image is a pure function of the scene (the background
noise comes from ``scene.bg_seed``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow")
SIZES = ("small", "large")
BACKGROUNDS = ("noise", "texture", "stripes")
KINDS = ("colour", "count", "presence", "position", "location")
GRID = 3
MAX_OBJECTS = 4
ROW_NAMES = ("top", "middle", "bottom")
COL_NAMES = ("left", "middle", "right")
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
N_OBJECTS_P = (0.1, 0.3, 0.3, 0.3)  # probabilities of 1, 2, 3, 4 objects

# Nominal RGB of each colour; objects get ±JITTER per channel.
RGB = {"red": (215, 35, 35), "green": (35, 185, 55), "blue": (40, 75, 225), "yellow": (230, 210, 35)}
JITTER = 20
# Object half-extent as a fraction of the cell side.
RADIUS = {"small": (0.19, 0.23), "large": (0.36, 0.41)}


def place_name(cell: tuple[int, int]) -> str:
    """(row, col) → "top left", "top middle", …, "centre", …, "bottom right"."""
    r, c = cell
    if (r, c) == (1, 1):
        return "centre"
    return f"{ROW_NAMES[r]} {COL_NAMES[c]}"


PLACES = tuple(place_name((r, c)) for r in range(GRID) for c in range(GRID))


@dataclasses.dataclass(frozen=True)
class Obj:
    """One object: ``shape`` ∈ SHAPES, ``colour`` ∈ COLOURS, ``size`` ∈ SIZES, ``cell`` = (row, col) in the 3 × 3
    grid; ``dx``, ``dy`` (offset of the centre from the cell centre) and ``radius`` are fractions of the cell side;
    ``rgb`` the exact fill colour."""

    shape: str
    colour: str
    size: str
    cell: tuple[int, int]
    dx: float = 0.0
    dy: float = 0.0
    radius: float = 0.3
    rgb: tuple[int, int, int] = (0, 0, 0)


@dataclasses.dataclass(frozen=True)
class Scene:
    """A background (``background`` ∈ BACKGROUNDS, drawn from ``bg_seed``) and 1–4 objects in distinct cells."""

    background: str
    objects: tuple[Obj, ...]
    bg_seed: int = 0

    def at(self, cell: tuple[int, int]) -> Obj | None:
        """The object in ``cell`` or None."""
        for o in self.objects:
            if o.cell == tuple(cell):
                return o
        return None


@dataclasses.dataclass(frozen=True)
class QA:
    """One question, its answer (a single lower-case word or digit) and its kind (∈ KINDS)."""

    question: str
    answer: str
    kind: str


@dataclasses.dataclass(frozen=True)
class Example:
    """A rendered image (PIL RGB) with one question about it."""

    image: Image.Image
    question: str
    answer: str
    kind: str
    scene: Scene


# ---------------------------------------------------------------------------------------------------------------------
# Scenes and rendering
# ---------------------------------------------------------------------------------------------------------------------


def make_scene(rng: np.random.Generator) -> Scene:
    """A random scene: background kind, 1–4 objects in distinct cells with random shape / colour / size."""
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    n = int(rng.choice(np.arange(1, MAX_OBJECTS + 1), p=N_OBJECTS_P))
    cells = rng.choice(GRID * GRID, size=n, replace=False)
    objects = []
    for cell in sorted(int(c) for c in cells):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = COLOURS[int(rng.integers(len(COLOURS)))]
        size = SIZES[int(rng.integers(len(SIZES)))]
        lo, hi = RADIUS[size]
        radius = float(rng.uniform(lo, hi))
        slack = max(0.5 - radius - 0.04, 0.0)  # keep the object inside its cell
        dx, dy = (float(v) for v in rng.uniform(-slack, slack, size=2))
        rgb = tuple(int(np.clip(v + rng.integers(-JITTER, JITTER + 1), 0, 255)) for v in RGB[colour])
        objects.append(Obj(shape, colour, size, (cell // GRID, cell % GRID), dx, dy, radius, rgb))
    return Scene(background, tuple(objects), int(rng.integers(2**31 - 1)))


def _background(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [size, size, 3] in 0..255, low saturation (objects' colours stay the salient cue)."""
    base = rng.uniform(95.0, 165.0)
    tint = rng.uniform(-12.0, 12.0, size=3)  # a faint colour cast
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == "noise":
        grey = base + rng.normal(0.0, rng.uniform(15.0, 30.0), size=(size, size))
        img = grey[:, :, None] + tint + rng.normal(0.0, 6.0, size=(size, size, 3))
    elif kind == "texture":
        k = int(rng.integers(4, 9))  # blotches: a coarse random grid, bilinearly upsampled
        coarse = rng.normal(0.0, 1.0, size=(k, k)).astype(np.float32)
        blot = np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.BILINEAR))
        grey = base + rng.uniform(20.0, 35.0) * blot / max(float(np.std(blot)), 1e-6)
        img = grey[:, :, None] + tint + rng.normal(0.0, 7.0, size=(size, size, 3))
    elif kind == "stripes":
        period = rng.uniform(0.06, 0.16) * size
        angle = rng.uniform(0.0, np.pi)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period
        amp = rng.uniform(18.0, 35.0)
        grey = base + amp * np.where((phase % 1.0) < 0.5, 1.0, -1.0)
        img = grey[:, :, None] + tint + rng.normal(0.0, 6.0, size=(size, size, 3))
    else:
        raise ValueError(f"unknown background {kind!r} (one of {BACKGROUNDS})")
    return img.astype(np.float32)


def _draw(draw: ImageDraw.ImageDraw, obj: Obj, size: int) -> None:
    cell = size / GRID
    cx = (obj.cell[1] + 0.5 + obj.dx) * cell
    cy = (obj.cell[0] + 0.5 + obj.dy) * cell
    r = obj.radius * cell
    box = (cx - r, cy - r, cx + r, cy + r)
    if obj.shape == "circle":
        draw.ellipse(box, fill=obj.rgb)
    elif obj.shape == "square":
        s = r * 0.9  # same visual weight as the circle
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=obj.rgb)
    elif obj.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=obj.rgb)
    else:
        raise ValueError(f"unknown shape {obj.shape!r} (one of {SHAPES})")


def render(scene: Scene, size: int) -> Image.Image:
    """The scene as a ``size`` × ``size`` RGB image (a pure function of ``scene`` and ``size``)."""
    rng = np.random.default_rng(scene.bg_seed)
    img = Image.fromarray(np.clip(_background(scene.background, size, rng), 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        _draw(draw, obj, size)
    return img


# ---------------------------------------------------------------------------------------------------------------------
# Questions
# ---------------------------------------------------------------------------------------------------------------------


def _describe(o: Obj) -> str:
    return f"{o.colour} {o.shape}"


def make_questions(scene: Scene, rng: np.random.Generator) -> list[QA]:
    """At most one question of each kind (in KINDS order) that is unambiguous for ``scene``.

    colour: only of a shape that occurs exactly once; count: any shape (0 allowed); presence: yes for an object of
    the scene, no for a (colour, shape) pair it does not hold, each with probability ½; position: two objects whose
    "colour shape" descriptions are unique in the scene and whose columns differ; location: an occupied cell.
    """
    objs = scene.objects
    out: list[QA] = []

    by_shape = {s: [o for o in objs if o.shape == s] for s in SHAPES}
    unique_shapes = [s for s in SHAPES if len(by_shape[s]) == 1]
    if unique_shapes:
        s = unique_shapes[int(rng.integers(len(unique_shapes)))]
        out.append(QA(f"What colour is the {s}?", by_shape[s][0].colour, "colour"))

    s = SHAPES[int(rng.integers(len(SHAPES)))]
    out.append(QA(f"How many {s}s are there?", str(len(by_shape[s])), "count"))

    present = sorted({(o.colour, o.shape) for o in objs})
    if rng.random() < 0.5:
        c, s = present[int(rng.integers(len(present)))]
        out.append(QA(f"Is there a {c} {s}?", "yes", "presence"))
    else:
        absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
        c, s = absent[int(rng.integers(len(absent)))]
        out.append(QA(f"Is there a {c} {s}?", "no", "presence"))

    counts: dict[str, int] = {}
    for o in objs:
        counts[_describe(o)] = counts.get(_describe(o), 0) + 1
    unique = [o for o in objs if counts[_describe(o)] == 1]
    pairs = [(a, b) for a in unique for b in unique if a.cell[1] != b.cell[1]]
    if pairs:
        a, b = pairs[int(rng.integers(len(pairs)))]
        answer = "yes" if a.cell[1] < b.cell[1] else "no"
        out.append(QA(f"Is the {_describe(a)} left of the {_describe(b)}?", answer, "position"))

    o = objs[int(rng.integers(len(objs)))]
    out.append(QA(f"What shape is in the {place_name(o.cell)}?", o.shape, "location"))
    return out


DESCRIBE = "Describe the image."


def describe(scene: Scene) -> str:
    """A dense description of the scene: "{colour} {shape} {place}" per object in reading order, joined by ", "
    (e.g. "red circle top left, blue square centre"). Not one of the QA kinds: training may mix it in as an auxiliary
    task (the question is :data:`DESCRIBE`); the splits never ask it."""
    objs = sorted(scene.objects, key=lambda o: o.cell)
    return ", ".join(f"{o.colour} {o.shape} {place_name(o.cell)}" for o in objs)


def make_example(split: str, index: int, seed: int = 0, *, size: int = 72) -> Example:
    """Example ``index`` of ``split`` (see the module docstring for the seeding): a scene, its image rendered at
    ``size`` px and one question, of a kind drawn uniformly from those the scene allows."""
    if split not in SPLIT_IDS:
        raise ValueError(f"unknown split {split!r} (one of {', '.join(SPLIT_IDS)})")
    rng = np.random.default_rng([int(seed), SPLIT_IDS[split], int(index)])
    scene = make_scene(rng)
    qas = make_questions(scene, rng)
    qa = qas[int(rng.integers(len(qas)))]
    return Example(render(scene, size), qa.question, qa.answer, qa.kind, scene)


def make_split(split: str, n: int, seed: int = 0, *, size: int = 72, start: int = 0) -> list[Example]:
    """Examples ``start`` … ``start + n − 1`` of ``split`` ("train", "val" or "test"); deterministic per seed.

    Raises ValueError for an unknown split.
    """
    return [make_example(split, i, seed, size=size) for i in range(start, start + n)]


def iter_split(split: str, seed: int = 0, *, size: int = 72, start: int = 0) -> Iterator[Example]:
    """The endless stream of examples of ``split`` from ``start`` on (training draws fresh examples from it)."""
    i = start
    while True:
        yield make_example(split, i, seed, size=size)
        i += 1


def answers() -> tuple[str, ...]:
    """Every possible answer."""
    return COLOURS + tuple(str(i) for i in range(MAX_OBJECTS + 1)) + ("yes", "no") + SHAPES


def questions() -> Iterator[str]:
    """Every question the generator can ask (each once)."""
    for s in SHAPES:
        yield f"What colour is the {s}?"
        yield f"How many {s}s are there?"
    for c in COLOURS:
        for s in SHAPES:
            yield f"Is there a {c} {s}?"
    for c1 in COLOURS:
        for s1 in SHAPES:
            for c2 in COLOURS:
                for s2 in SHAPES:
                    if (c1, s1) != (c2, s2):
                        yield f"Is the {c1} {s1} left of the {c2} {s2}?"
    for p in PLACES:
        yield f"What shape is in the {p}?"


def corpus() -> Iterator[str]:
    """Every question and every answer (bare and after a space, as it follows a chat-template prompt), as text
    lines for tokenizer training."""
    yield from questions()
    yield DESCRIBE
    for a in answers():
        yield a
        yield f" {a}"
