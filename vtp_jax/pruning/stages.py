"""The pruning stages, one base class each. Every registered method (:mod:`vtp_jax.pruning.registry`) is a frozen
dataclass deriving from exactly one of them, so front ends and generators ask ``isinstance`` / the class attributes
instead of duck typing, and the keep-count check exists once (:meth:`KeepCount.check_keep`).

============================  ====================  ===================================================
base                          ``stage``             methods
============================  ====================  ===================================================
:class:`PreLLMSelection`      ``"pre_llm"``         ToDRE stage 1, DivPrune, random (the decoder only sees the kept
                                                    visual tokens)
:class:`InLLMCompaction`      ``"in_llm"``          FastV (score attention rows at layer K − 1, compact before K)
:class:`AllOrNothingGate`     ``"in_llm"``          ToDRE stage 2 (drop every visual token from layer ℓ on, or none)
:class:`DecodePruning`        ``"decode"``          DyRate (the KV cache shrinks between decode steps)
:class:`AfterFirstStep`       ``"during_generation"``  RedVTP, LLaDA-FastV (scored at the first denoising step)
============================  ====================  ===================================================

Bases are plain classes, except :class:`KeepCount`, whose two keyword-only fields (``keep_ratio``,
``keep_rounding``) follow each method's own fields, so those stay positional as declared.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from vtp_jax.pruning.core import PruningError, resolve_keep

STAGES = ("pre_llm", "in_llm", "decode", "during_generation")


class Stage:
    """A pruning method. Class attributes: ``name`` (registry key), ``stage`` (one of :data:`STAGES`),
    ``takes_keep`` (whether ``--keep`` / ``--keep-ratio`` set its keep count)."""

    name: ClassVar[str]
    stage: ClassVar[str]
    takes_keep: ClassVar[bool] = False

    def validate(self, num_visual: int, num_layers: int) -> None:
        """Checks the method's options against the model (N_v visual tokens, ``num_layers`` decoder layers).
        Raises PruningError. The base checks nothing."""


@dataclasses.dataclass(frozen=True)
class KeepCount(Stage):
    """A method that keeps a static number ``keep`` of the visual tokens (a dataclass field of the method).

    Two keyword-only fields, shared by every such method, say how a batch whose rows hold different numbers of
    visual tokens is pruned: ``keep_ratio`` (None: every row keeps ``keep`` tokens; a float: row ``b`` keeps
    ``round(keep_ratio · N_v[b])``, floored with ``keep_rounding="floor"``, at least 1 — the rule ``keep`` was
    resolved with, see :func:`vtp_jax.pruning.core.resolve_keep`). :func:`vtp_jax.runtime.build_method` sets them
    when the keep count comes from a ratio.
    """

    takes_keep: ClassVar[bool] = True
    keep_ratio: float | None = dataclasses.field(default=None, kw_only=True)
    keep_rounding: str = dataclasses.field(default="round", kw_only=True)

    def check_keep(self, num_visual: int) -> None:
        """Raises PruningError unless ``keep`` is an int with 1 ≤ keep ≤ N_v."""
        keep = self.keep
        if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= num_visual:
            raise PruningError(f"keep must be between 1 and the number of visual tokens ({num_visual}), got {keep}")

    def validate(self, num_visual: int, num_layers: int) -> None:
        """Raises PruningError unless 1 ≤ keep ≤ N_v (subclasses add their own checks after ``super()``)."""
        self.check_keep(num_visual)

    def row_keeps(self, counts) -> np.ndarray:
        """Per-row keep counts for rows holding ``counts`` int [B] visual tokens → int32 [B] (see the class doc).

        Checks that each row drops no more tokens than the largest row (``N_v[b] − k_b ≤ max N_v − max k``: the
        padding slots of a row can fill its keep bucket, :func:`vtp_jax.pruning.core.fill_selection`), which both
        rules guarantee. Raises PruningError when a row cannot keep its count (``keep`` > its N_v).
        """
        counts = np.asarray(counts, np.int64).reshape(-1)
        if self.keep_ratio is None:
            keeps = np.full(counts.shape, self.keep, np.int64)
        else:
            keeps = np.asarray([resolve_keep(int(n), keep_ratio=self.keep_ratio, rounding=self.keep_rounding)
                                for n in counts], np.int64)
        for n, k in zip(counts, keeps):
            if not 1 <= k <= n:
                raise PruningError(f"{self.name}: keep must be between 1 and the number of visual tokens of every "
                                   f"row; a row holds {n}, keep is {k}")
        if np.any(counts - keeps > counts.max() - keeps.max()):
            raise PruningError(f"{self.name}: per-row keep counts {keeps.tolist()} for visual counts "
                               f"{counts.tolist()} do not fit one keep bucket")
        return keeps.astype(np.int32)


class PreLLMSelection(KeepCount):
    """Before the LLM: ``select(visual, cls_attn) -> kept int32 [B, keep]`` from the projector outputs (and, for
    methods whose :meth:`cls_probe` names a vision layer, that layer's class-token attention)."""

    stage: ClassVar[str] = "pre_llm"

    def cls_probe(self, cfg) -> int | None:
        """The 1-based vision-tower layer whose class-token attention this method needs, or None."""
        return None


class InLLMCompaction(KeepCount):
    """Inside the LLM: scores visual tokens from attention rows at layer ``layer − 1`` and keeps ``keep`` of them
    from layer ``layer`` on."""

    stage: ClassVar[str] = "in_llm"


class AllOrNothingGate(Stage):
    """Inside the LLM, no keep count: at one layer, a host-side decision per row drops every visual token or none
    (``fires(...) -> bool [B]``)."""

    stage: ClassVar[str] = "in_llm"


class DecodePruning(Stage):
    """Between autoregressive decode steps: the method chooses how many visual KV entries stay (no keep count)."""

    stage: ClassVar[str] = "decode"


class AfterFirstStep(KeepCount):
    """Masked diffusion: scored at the first denoising step (attention of the still-masked response rows); the
    pruned visual tokens leave the sequence for every later step."""

    stage: ClassVar[str] = "during_generation"
