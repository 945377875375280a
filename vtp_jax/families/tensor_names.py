"""Tensor layouts shared by every family's name map: where a Hugging Face tensor goes (:class:`Target`) and the
layout transform between torch and Flax:

* ``"linear"``: torch Linear weight [out, in] → Flax kernel [in, out] (transpose).
* ``"conv"``:   torch Conv2d weight [D, C, p, p] → Flax kernel [p, p, C, D] (transpose (2, 3, 1, 0)).
* ``"patch"``:  torch Conv3d weight [D, C, T, p, p] whose stride equals its kernel (Qwen2.5-VL's patch embedding)
  → Flax kernel [C·T·p·p, D] (flattened in (C, T, p, p) order — the order of the processor's patch rows — then
  transposed).
* ``"none"``:   copied as is (biases, norms, embeddings).

Pure functions, no I/O: the converter (``convert``) and the testbed exporter (its inverse) both use them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

TRANSFORMS = ("linear", "conv", "patch", "none")


class Target(NamedTuple):
    """Where an HF tensor goes: our dotted parameter path and the layout transform to apply."""

    path: str
    transform: str


def with_canonical_prefix(name: str, prefixes) -> str | None:
    """``name`` with the first matching HF prefix of ``prefixes`` ((HF prefix, canonical prefix) pairs, longest
    first) replaced by its canonical one (``vision.`` / ``text.`` …), or None when no prefix matches — the first
    step of every family's name map."""
    for prefix, part in prefixes:
        if name.startswith(prefix):
            return part + name[len(prefix):]
    return None


def apply_transform(array: np.ndarray, transform: str) -> np.ndarray:
    """Applies a layout transform (see module docstring); returns a C-contiguous array.

    Raises:
      ValueError: the array has the wrong rank for the transform, or the transform is unknown.
    """
    if transform == "none":
        return np.ascontiguousarray(array)
    if transform == "linear":
        if array.ndim != 2:
            raise ValueError(f"linear weight must be 2-D, got shape {tuple(array.shape)}")
        return np.ascontiguousarray(array.T)
    if transform == "conv":
        if array.ndim != 4:
            raise ValueError(f"conv weight must be 4-D, got shape {tuple(array.shape)}")
        return np.ascontiguousarray(np.transpose(array, (2, 3, 1, 0)))
    if transform == "patch":
        if array.ndim != 5:
            raise ValueError(f"patch-embedding weight must be 5-D, got shape {tuple(array.shape)}")
        return np.ascontiguousarray(array.reshape(array.shape[0], -1).T)
    raise ValueError(f"unknown transform {transform!r}")


def transformed_shape(shape: tuple[int, ...], transform: str) -> tuple[int, ...] | None:
    """Shape after ``transform`` without touching data; None if the rank does not fit the transform."""
    shape = tuple(int(s) for s in shape)
    if transform == "none":
        return shape
    if transform == "linear":
        return shape[::-1] if len(shape) == 2 else None
    if transform == "conv":
        return (shape[2], shape[3], shape[1], shape[0]) if len(shape) == 4 else None
    if transform == "patch":
        return (shape[1] * shape[2] * shape[3] * shape[4], shape[0]) if len(shape) == 5 else None
    raise ValueError(f"unknown transform {transform!r}")


def source_shape(shape: tuple[int, ...], transform: str) -> tuple[int, ...]:
    """Inverse of :func:`transformed_shape`: the HF-layout shape our parameter of ``shape`` expects ("patch": the
    flattened [D, C·T·p·p], since the kernel alone does not say how C·T·p·p factors)."""
    shape = tuple(int(s) for s in shape)
    if transform == "patch":
        return shape[::-1]
    if transform == "linear":
        return shape[::-1]
    if transform == "conv":
        return (shape[3], shape[2], shape[0], shape[1])
    return shape
