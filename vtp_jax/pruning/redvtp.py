"""RedVTP (Xu et al., 2025): response-driven visual token pruning for diffusion VLMs ("RedVTP: Training-Free
Acceleration of Diffusion Vision-Language Models Inference via Masked Token-Guided Visual Token Pruning"; code:
Blacktower27/RedVTP-LLaDA-V).

At the first denoising step of the first block, every visual token j gets
    score_j = mean_{i ∈ R} Ā[i, j],   Ā = attention probabilities averaged over all layers and all heads,
where R are the response positions masked before that step and still masked after its unmasking. The top ``keep``
visual tokens (ascending) stay; the others are removed from the sequence for every later step and block.
Positions are re-indexed contiguously afterwards (the reference code's behaviour) unless ``reindex=False``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from vtp_jax.pruning.stages import AfterFirstStep
from vtp_jax.pruning.core import PruningError
from vtp_jax.pruning.registry import register


@register
@dataclasses.dataclass(frozen=True)
class RedVTP(AfterFirstStep):
    """keep: visual tokens kept (static; the paper's keep ratio 0.5 → ``max(1, int(N_v · 0.5))``). reindex:
    renumber positions after pruning (the reference code's behaviour). score_step: the global denoising step
    (0-based) whose attention scores the visual tokens; the official code hard-codes 0 (the first step of the first
    block). At s > 0 the steps before it run on every visual token, and step s runs at full length (also under
    approximate caching), so its rows R are the response positions masked before and after step s."""

    keep: int
    reindex: bool = True
    score_step: int = 0

    name = "redvtp"

    def validate(self, num_visual: int, num_layers: int) -> None:
        """Raises PruningError unless 1 ≤ keep ≤ N_v and score_step is a whole number ≥ 0."""
        self.check_keep(num_visual)
        s = self.score_step
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise PruningError(f"{self.name}: score_step must be a whole number ≥ 0, got {s!r}")

    def probe_layers(self, num_layers: int) -> tuple[int, ...]:
        """Every layer's attention is averaged."""
        return tuple(range(num_layers))

    def token_scores(self, probe: jax.Array, rows: jax.Array) -> jax.Array:
        """probe float32 [B, G, T] (response rows, mean over heads and layers); rows bool [B, G] (the set R)
        → per-token score float32 [B, T] = mean over rows in R (zeros if R is empty)."""
        w = rows.astype(probe.dtype)
        return jnp.einsum("bgt,bg->bt", probe, w) / jnp.maximum(w.sum(1, keepdims=True), 1.0)


@register
@dataclasses.dataclass(frozen=True)
class LladaFastV(RedVTP):
    """FastV-style scoring for diffusion VLMs (LLaDA-FastV, arXiv 2601.20168).

    Like :class:`RedVTP` — first denoising step, rows = still-masked response positions, pruned tokens removed
    for every later step — but the attention comes from one middle layer only: layer ``layer − 1`` (FastV's
    convention for "prune at layer K"), default ``K = num_layers // 2``. Where that paper's details differ, this
    is the documented choice.
    """

    layer: int | None = None

    name = "llada-fastv"

    def validate(self, num_visual: int, num_layers: int) -> None:
        super().validate(num_visual, num_layers)
        if self.layer is not None and not 1 <= self.layer <= num_layers:
            raise PruningError(f"LLaDA-FastV layer K must be in [1, {num_layers}], got {self.layer}")

    def probe_layers(self, num_layers: int) -> tuple[int, ...]:
        k = self.layer if self.layer is not None else max(1, num_layers // 2)
        return (k - 1,)
