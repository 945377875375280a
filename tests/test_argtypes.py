"""vtp_jax.argtypes: the validated argparse types every front end uses."""

import argparse

import pytest

from vtp_jax import argtypes


def _parser():
    p = argparse.ArgumentParser(prog="t", exit_on_error=False)
    p.add_argument("--seed", type=argtypes.SEED)
    p.add_argument("--top-p", type=argtypes.PROBABILITY)
    p.add_argument("--runs", type=argtypes.POSITIVE)
    p.add_argument("--temperature", type=argtypes.NON_NEGATIVE_REAL)
    return p


@pytest.mark.parametrize("argv, why", [
    (["--seed", "99999999999999999999"], "must be in [0, 4294967295]"),
    (["--seed", "-1"], "must be in [0, 4294967295]"),
    (["--seed", "1.5"], "is not a whole number"),
    (["--top-p", "0"], "must be in (0, 1]"),
    (["--top-p", "nan"], "must be a finite number"),
    (["--top-p", "1.01"], "must be in (0, 1]"),
    (["--runs", "0"], "must be ≥ 1"),
    (["--temperature", "-1"], "must be ≥ 0, got -1.0"),
    (["--temperature", "inf"], "must be a finite number"),
    (["--temperature", "x"], "is not a number"),
])
def test_bad_values_are_usage_errors(argv, why):
    with pytest.raises(argparse.ArgumentError, match=None) as e:
        _parser().parse_args(argv)
    assert why in str(e.value) and argv[0] in str(e.value)


def test_good_values_parse():
    a = _parser().parse_args(["--seed", str(argtypes.SEED_MAX), "--top-p", "1", "--runs", "3", "--temperature", "0"])
    assert (a.seed, a.top_p, a.runs, a.temperature) == (2**32 - 1, 1.0, 3, 0.0)


@pytest.mark.parametrize("value, ok", [(0.5, True), (float("nan"), False), (0.0, False), (2, False), ("x", False)])
def test_check_value(value, ok):
    if ok:
        argtypes.check_value("top_p", value, argtypes.PROBABILITY)
    else:
        with pytest.raises(ValueError, match="top_p"):
            argtypes.check_value("top_p", value, argtypes.PROBABILITY)
