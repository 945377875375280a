"""The model-family registry (see :mod:`vtp_jax.families.base`).

``get(name)`` and ``for_model_type(model_type)`` are the only ways front ends learn what a family is; an unknown
family is one :class:`UnknownFamilyError` raised here. Each family's module registers its record on import; the
modules listed in :data:`_BUILTIN` are imported on first use, and listed first, in that order (another module may
register more families: they follow in registration order).
"""

from __future__ import annotations

import importlib

from vtp_jax.families.base import (
    AUTOREGRESSIVE, GENERATOR_KINDS, MASKED_DIFFUSION, SAMPLER_DEFAULTS, Family, UnknownFamilyError,
)

_FAMILIES: dict[str, Family] = {}
_BUILTIN = {"llava": "vtp_jax.families.llava", "llada_v": "vtp_jax.families.llada_v",
            "llava_next": "vtp_jax.families.llava_next", "qwen2_5_vl": "vtp_jax.families.qwen2_5_vl"}  # name → module
_loaded = False


def register(family: Family) -> Family:
    """Adds ``family`` to the registry. Raises ValueError for a name or ``model_type`` registered twice."""
    if family.name in _FAMILIES:
        raise ValueError(f"model family {family.name!r} registered twice")
    taken = {t: f.name for f in _FAMILIES.values() for t in f.model_types}
    for t in family.model_types:
        if t in taken:
            raise ValueError(f"model_type {t!r} of family {family.name!r} is already family {taken[t]!r}'s")
    _FAMILIES[family.name] = family
    return family


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _BUILTIN.values():
            importlib.import_module(module)


def families() -> dict[str, Family]:
    """{name: Family} of every registered family: the built-in ones in :data:`_BUILTIN` order, then the others in
    registration order."""
    _load_builtin()
    order = [n for n in _BUILTIN if n in _FAMILIES] + [n for n in _FAMILIES if n not in _BUILTIN]
    return {n: _FAMILIES[n] for n in order}


def get(name: str) -> Family:
    """The family named ``name``. Raises UnknownFamilyError listing the registered names."""
    _load_builtin()
    if name not in _FAMILIES:
        raise UnknownFamilyError(f"unknown model family {name!r} (supported: {', '.join(families())})")
    return _FAMILIES[name]


def for_model_type(model_type) -> Family:
    """The family that converts Hugging Face ``config.json`` ``model_type``. Raises UnknownFamilyError."""
    _load_builtin()
    for family in families().values():
        if model_type in family.model_types:
            return family
    known = ", ".join(t for f in families().values() for t in f.model_types)
    raise UnknownFamilyError(f"unsupported model_type {model_type!r} (supported: {known})")


__all__ = ["AUTOREGRESSIVE", "GENERATOR_KINDS", "MASKED_DIFFUSION", "SAMPLER_DEFAULTS", "Family",
           "UnknownFamilyError", "families", "for_model_type", "get", "register"]
