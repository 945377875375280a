"""``vtp-train-testbed``: the parser, the flag checks and :func:`main`.

This module is the composition root of the testbed trainer: it is the only one that imports the converter
(:func:`convert.convert`, from the ``convert`` package built on ``vtp_jax``) and hands it to
:func:`vtp_jax.training.testbed.loop.train` as its ``converter``. The library modules of the trainer never import
``convert``, and nothing ``convert`` imports reaches ``vtp_jax.training``, so the import graph has no cycle.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import math
import sys

import numpy as np

from convert import convert
from vtp_jax import families
from vtp_jax.testbed import shapes
from vtp_jax.training import testbed as _package
from vtp_jax.training.testbed.builders import TESTBEDS, testbed_builder
from vtp_jax.training.testbed.loop import train
from vtp_jax.training.testbed.settings import FAMILIES, SIZES, TrainError, TrainSettings

PROG = "vtp-train-testbed"


def _masked_diffusion_families() -> tuple[str, ...]:
    """The testbed families whose generator kind is masked diffusion (the ones the masking flags apply to)."""
    return tuple(f for f in FAMILIES if families.get(f).kind == families.MASKED_DIFFUSION)


def _size_keys(family: str) -> set[str]:
    """The ``--sizes`` keys of ``family``: its config builder's keyword arguments."""
    return set(inspect.signature(testbed_builder(family).config_builder).parameters)


def _sizes_type(text: str) -> str:
    """argparse type of ``--sizes``: a JSON object whose keys are keyword arguments of some testbed family's config
    builder (``tiny_llava_config`` / ``tiny_llada_v_config``); the sizes of :data:`SIZES` must be whole numbers ≥ 1
    and ``rope_theta`` a finite number > 0. Returns the text unchanged (main parses it). Raises ArgumentTypeError."""
    try:
        sizes = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(sizes, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object of sizes, got {type(sizes).__name__}")
    if not sizes:
        return text
    known = set().union(*(_size_keys(family) for family in TESTBEDS))
    counts = set().union(*(set(s) for s in SIZES.values()))
    for key, value in sizes.items():
        if key not in known:
            raise argparse.ArgumentTypeError(f"unknown size {key!r} (known: {', '.join(sorted(known))})")
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key in counts and not (number and isinstance(value, int) and value >= 1):
            raise argparse.ArgumentTypeError(f"{key} must be a whole number ≥ 1, got {value!r}")
        if key == "rope_theta" and not (number and math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"rope_theta must be a finite number > 0, got {value!r}")
    return text


def _parser() -> argparse.ArgumentParser:
    """The ``vtp-train-testbed`` argument parser."""
    from vtp_jax import argtypes

    p = argparse.ArgumentParser(prog=PROG, description=_package.__doc__.splitlines()[0])
    p.add_argument("--family", required=True, choices=FAMILIES)
    p.add_argument("--out", required=True, help="output HF-format directory (the input of vtp-convert)")
    d = TrainSettings(FAMILIES[0])
    p.add_argument("--steps", type=argtypes.POSITIVE, default=d.steps)
    p.add_argument("--seed", type=argtypes.SEED, default=d.seed)
    p.add_argument("--batch", type=argtypes.POSITIVE, default=d.batch)
    p.add_argument("--lr", type=argtypes.POSITIVE_REAL, default=d.lr, help="peak learning rate (> 0)")
    p.add_argument("--warmup", type=argtypes.NON_NEGATIVE, default=d.warmup)
    p.add_argument("--weight-decay", type=argtypes.NON_NEGATIVE_REAL, default=d.weight_decay)
    p.add_argument("--describe", type=argtypes.UNIT_INTERVAL, default=d.describe,
                   help="fraction of training examples replaced by the auxiliary description task")
    p.add_argument("--vision-steps", type=argtypes.NON_NEGATIVE, default=d.vision_steps,
                   help="steps of the vision pre-training stage (0 = none)")
    p.add_argument("--max-turns", type=argtypes.POSITIVE, default=d.max_turns,
                   help="question turns per training conversation")
    p.add_argument("--train-vision", action="store_true", help="also train the vision tower in stage 2")
    p.add_argument("--complementary", action="store_true",
                   help="LLaDA-V: complementary masking (LaViDa): --batch/2 conversations per step, each twice, "
                        "the copy masked with the complement, so every response token is a target")
    p.add_argument("--full-mask", type=float, default=d.full_mask, metavar="F",  # range checked in main
                   help="LLaDA-V: fraction of each batch whose whole response is masked (t = 1, the first denoising "
                        "step's input); the rest t ~ U(0, 1) as in LLaDA")
    p.add_argument("--kinds", default=None, metavar="K1,K2",
                   help=f"train only on questions of these kinds (comma-separated, from {','.join(shapes.KINDS)}; "
                        "default all) — e.g. a spatial curriculum stage: --kinds location,position")
    p.add_argument("--kind-weights", default=None, metavar="K1=W1,K2=W2",
                   help="draw the kind of each conversation's first question with these relative weights (kinds not "
                        "listed: 0) instead of the data's own mix; a scene that cannot be asked the drawn kind is "
                        "skipped and a kind drawn afresh, so a kind not every scene has (position) gets less than its "
                        "weight's share — e.g. colour=1,count=1,presence=1,location=2,position=2")
    p.add_argument("--init", default=None, metavar="HF_DIR",
                   help="continue from an exported testbed of the same sizes (use with --vision-steps 0)")
    p.add_argument("--eval-every", type=argtypes.POSITIVE, default=d.eval_every)
    p.add_argument("--val-n", type=argtypes.POSITIVE, default=d.val_n)
    p.add_argument("--test-n", type=argtypes.POSITIVE, default=d.test_n)
    p.add_argument("--sizes", type=_sizes_type, default=None,
                   help="JSON dict overriding model sizes (tiny_*_config arguments; sizes whole numbers ≥ 1)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.add_argument("--no-progress", action="store_true")
    return p


def parse_kind_weights(text: str, kinds: tuple[str, ...] | None = None) -> dict[str, float]:
    """``"location=2,position=2,colour=1"`` → {kind: weight} for ``--kind-weights``.

    Raises:
      TrainError: a malformed item, an unknown kind or one outside ``kinds``, a negative or non-finite weight, or
        weights that are all zero.
    """
    allowed = shapes.KINDS if kinds is None else kinds
    out: dict[str, float] = {}
    for item in (t.strip() for t in text.split(",")):
        kind, sep, value = item.partition("=")
        kind = kind.strip()
        try:
            weight = float(value) if sep else float("nan")
        except ValueError:
            weight = float("nan")
        if not np.isfinite(weight) or weight < 0:
            raise TrainError(f"--kind-weights {text!r}: {item!r} is not KIND=WEIGHT with a weight ≥ 0")
        if kind not in allowed or kind in out:
            raise TrainError(f"--kind-weights {text!r}: {kind!r} is unknown, repeated or outside --kinds "
                             f"(choose from {','.join(allowed)})")
        out[kind] = weight
    if not sum(out.values()) > 0:
        raise TrainError(f"--kind-weights {text!r}: at least one weight must be > 0")
    return {k: w for k, w in out.items() if w > 0}


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    """The :class:`TrainSettings` of parsed flags, after the checks argparse cannot make (``--sizes`` keys of the
    other family, ``--kinds``, ``--kind-weights``, the masking flags, which apply to masked-diffusion families only).

    Raises:
      TrainError: a flag combination that does not apply; json.JSONDecodeError: unreadable ``--sizes``.
    """
    sizes = json.loads(args.sizes) if args.sizes else {}
    own = _size_keys(args.family)
    if set(sizes) - own:
        raise TrainError(f"--sizes: {', '.join(sorted(set(sizes) - own))} do not apply to --family "
                         f"{args.family} (its sizes: {', '.join(sorted(own))})")
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip()) if args.kinds is not None else None
    if kinds is not None and (not kinds or not set(kinds) <= set(shapes.KINDS)):
        raise TrainError(f"--kinds {args.kinds!r}: choose one or more of {','.join(shapes.KINDS)}")
    kind_weights = parse_kind_weights(args.kind_weights, kinds) if args.kind_weights is not None else None
    if args.steps < 1 or args.batch < 1:
        raise TrainError("--steps and --batch must be ≥ 1")
    diffusion = _masked_diffusion_families()
    masked_diffusion = args.family in diffusion
    names = " / ".join(diffusion)
    if args.complementary and (not masked_diffusion or args.batch % 2):
        raise TrainError(f"--complementary is for --family {names} with an even --batch")
    if args.full_mask and (not masked_diffusion or args.complementary or not 0 < args.full_mask <= 1):
        raise TrainError(f"--full-mask is a fraction in (0, 1] for --family {names}, without --complementary")
    return TrainSettings(
        family=args.family, steps=args.steps, batch=args.batch, lr=args.lr, warmup=args.warmup,
        weight_decay=args.weight_decay, seed=args.seed, eval_every=args.eval_every, val_n=args.val_n,
        test_n=args.test_n, describe=args.describe, vision_steps=args.vision_steps,
        train_vision=args.train_vision, complementary=args.complementary, full_mask=args.full_mask,
        max_turns=args.max_turns, kinds=kinds, kind_weights=kind_weights,
        sizes=sizes, init=args.init,
    )


def main(argv: list[str] | None = None) -> int:
    """``vtp-train-testbed``: parses ``argv``, trains, exports and converts (with :func:`convert.convert`). Returns
    the exit status: 0, or 2 with one ``vtp-train-testbed: error: …`` line on stderr for bad input."""
    from vtp_jax.paths import OutputPathError

    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        settings = settings_from_args(args)
        train(settings, args.out, converter=functools.partial(convert, progress=False), force=args.force,
              progress=not args.no_progress)
    except (TrainError, OutputPathError, json.JSONDecodeError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
