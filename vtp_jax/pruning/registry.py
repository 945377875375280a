"""The method registry: every pruning method is a frozen (hashable, jit-static) dataclass registered by name.

Each method declares its ``stage``:
  - ``"pre_llm"``: shrinks the visual span before the decoder (ToDRE stage 1, DivPrune, random);
  - ``"in_llm"``: scores tokens from attention rows at layer ``layer − 1`` and compacts before ``layer`` (FastV);
  - ``"during_generation"``: prunes between denoising steps of a diffusion decoder (RedVTP);
  - ``"decode"``: prunes the KV cache between autoregressive decode steps (DyRate).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vtp_jax.pruning.core import PruningError

METHODS: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: adds a method dataclass to :data:`METHODS` under ``cls.name``."""
    if cls.name in METHODS:
        raise ValueError(f"pruning method {cls.name!r} registered twice")
    METHODS[cls.name] = cls
    return cls


def make_method(name: str, **options: Any):
    """Builds a registered method; ``None`` options are dropped so dataclass defaults apply.

    Raises PruningError for an unknown name or option.
    """
    if name not in METHODS:
        raise PruningError(f"unknown pruning method {name!r} (available: none, {', '.join(sorted(METHODS))})")
    cls = METHODS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(k for k, v in options.items() if v is not None and k not in fields)
    if unknown:
        raise PruningError(f"method {name!r} does not take option(s) {', '.join(unknown)}")
    return cls(**{k: v for k, v in options.items() if v is not None})
