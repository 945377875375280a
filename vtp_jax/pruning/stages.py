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

Bases are plain classes (no dataclass fields of their own), so each method's dataclass fields stay as declared.
"""

from __future__ import annotations

from typing import ClassVar

from vtp_jax.pruning.core import PruningError

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


class KeepCount(Stage):
    """A method that keeps a static number ``keep`` of the visual tokens (a dataclass field of the method)."""

    takes_keep: ClassVar[bool] = True
    keep: int

    def check_keep(self, num_visual: int) -> None:
        """Raises PruningError unless ``keep`` is an int with 1 ≤ keep ≤ N_v."""
        keep = self.keep
        if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= num_visual:
            raise PruningError(f"keep must be between 1 and the number of visual tokens ({num_visual}), got {keep}")

    def validate(self, num_visual: int, num_layers: int) -> None:
        """Raises PruningError unless 1 ≤ keep ≤ N_v (subclasses add their own checks after ``super()``)."""
        self.check_keep(num_visual)


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
