"""Validated argparse types shared by every command-line front end (vtp-generate, vtp-eval, vtp-bench, vtp-convert,
the trainers): a bad value is an argparse usage error (``<prog>: error: argument --flag: <why>``, exit 2) before
anything runs, never an ``OverflowError`` or a silent clamp later.

* :func:`integer` / :func:`real` — range-checked int / finite float types (``nan`` and ``inf`` are refused).
* :data:`SEED` — a seed in ``[0, SEED_MAX]`` (what ``numpy.random.default_rng`` and ``jax.random.key`` accept on
  every backend without overflow).
* :data:`POSITIVE`, :data:`NON_NEGATIVE`, :data:`PROBABILITY` (``(0, 1]``, e.g. top-p), :data:`UNIT_INTERVAL`
  (``[0, 1]``, e.g. a threshold), :data:`NON_NEGATIVE_REAL` (e.g. a temperature or a guidance scale),
  :data:`POSITIVE_REAL` (e.g. a learning rate), :data:`FINITE` (any finite number).
* The sampler rules both generator families share (:data:`TEMPERATURE`, :data:`TOP_P`, :data:`GUIDANCE`): the
  argparse flags of :func:`vtp_jax.runtime.add_sampler_arguments` and the Python-API check
  :func:`vtp_jax.generation.sampling.check_sampler_settings` use the same objects.

Each type is a plain callable ``str -> value`` raising ``argparse.ArgumentTypeError``; :func:`check_value` applies the
same rule to a value that did not come from the command line (the Python API), raising ``ValueError``.
"""

from __future__ import annotations

import argparse
import math
import numbers
from typing import Callable

import numpy as np

SEED_MAX = 2**32 - 1


def _num(x) -> str:
    """A bound as text: ints as they are, floats in the shortest form (0.0 → "0", 1e-06 → "1e-06")."""
    return str(x) if isinstance(x, int) else format(x, "g")


def _range_text(lo, hi, lo_open: bool, hi_open: bool) -> str:
    lo, hi = (None if v is None else _num(v) for v in (lo, hi))
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '≥'} {lo}"
    return f"{'<' if hi_open else '≤'} {hi}"


def _check_range(value, lo, hi, lo_open: bool, hi_open: bool) -> str | None:
    """None when ``value`` is inside the range, else the reason it is not."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    below = lo is not None and (value <= lo if lo_open else value < lo)
    above = hi is not None and (value >= hi if hi_open else value > hi)
    if below or above:
        return f"must be {_range_text(lo, hi, lo_open, hi_open)}, got {value}"
    return None


def _number_type(convert: Callable[[str], float], noun: str, name: str, lo, hi, lo_open: bool,
                 hi_open: bool) -> Callable[[str], float]:
    """The argparse type both :func:`integer` and :func:`real` are: ``convert`` the text (ValueError → "is not
    ``noun``"), then :func:`_check_range`. ``name`` becomes the callable's ``__name__`` (argparse and
    :func:`check_value` read it)."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        why = _check_range(value, lo, hi, lo_open, hi_open)
        if why:
            raise argparse.ArgumentTypeError(why)
        return value

    parse.__name__ = name
    return parse


def integer(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in ``[lo, hi]`` (either bound may be None)."""
    return _number_type(lambda text: int(text.strip()), "a whole number", "integer", lo, hi, False, False)


def real(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
         hi_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float in the range (closed bounds unless ``lo_open`` / ``hi_open``)."""
    return _number_type(float, "a number", "number", lo, hi, lo_open, hi_open)


SEED = integer(0, SEED_MAX)
POSITIVE = integer(1)
NON_NEGATIVE = integer(0)
PROBABILITY = real(0.0, 1.0, lo_open=True)
UNIT_INTERVAL = real(0.0, 1.0)
NON_NEGATIVE_REAL = real(0.0)
POSITIVE_REAL = real(0.0, lo_open=True)
FINITE = real()

# Sampler settings (vtp-generate / vtp-eval flags and the generators' Python API).
TEMPERATURE = NON_NEGATIVE_REAL  # 0 = greedy
TOP_P = PROBABILITY
GUIDANCE = NON_NEGATIVE_REAL  # LLaDA-V classifier-free guidance scale, 0 = off


def check_value(name: str, value, parse: Callable[[str], object]) -> None:
    """Applies the rule of an argparse type from this module to a Python value (not a string): an ``int`` or any
    integral number (NumPy integers included) for :func:`integer` types — a float only when it is whole —, any real
    number for :func:`real` types. Booleans and strings are refused.

    Raises:
      ValueError: ``"<name> <why>"`` when ``value`` breaks the rule (or is not a number).
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if parse.__name__ == "integer":
        if isinstance(value, numbers.Integral):
            text = str(int(value))
        elif math.isfinite(float(value)) and float(value).is_integer():
            text = str(int(value))
        else:
            raise ValueError(f"{name} must be a whole number, got {value!r}")
    else:
        text = repr(float(value))
    try:
        parse(text)
    except argparse.ArgumentTypeError as e:
        raise ValueError(f"{name} {e}") from None
