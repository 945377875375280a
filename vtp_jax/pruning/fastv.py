"""FastV (Chen et al., 2024, "An Image is Worth 1/2 Tokens After Layer 2"; code: pkunlp-icler/FastV).

During prefill, at layer K the visual tokens are ranked by the head-averaged attention they receive at layer K − 1
and only the top ``keep`` go on; layers ≥ K (and their KV cache) run on the shorter sequence, layers < K keep their
full cache. Criterion "last" (default, the code's): attention from the last prompt token. Criterion "all" (the
paper's text): attention averaged over every valid prompt row. Kept tokens keep their original RoPE positions
unless ``reindex``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from vtp_jax.pruning.stages import InLLMCompaction
from vtp_jax.pruning.core import PruningError
from vtp_jax.pruning.registry import register


@register
@dataclasses.dataclass(frozen=True)
class FastV(InLLMCompaction):
    """keep: visual tokens kept (static). layer: K ≥ 1 (paper default 2). criterion: "last" | "all"."""

    keep: int
    layer: int = 2
    criterion: str = "last"
    reindex: bool = False

    name = "fastv"

    def validate(self, num_visual: int, num_layers: int) -> None:
        """Raises PruningError unless 1 ≤ keep ≤ N_v and 1 ≤ layer < num_layers."""
        self.check_keep(num_visual)
        if not 1 <= self.layer < num_layers:
            raise PruningError(f"FastV layer K must be in [1, {num_layers - 1}] for a {num_layers}-layer decoder, got {self.layer}")
        if self.criterion not in ("last", "all"):
            raise PruningError(f"FastV criterion must be 'last' or 'all', got {self.criterion!r}")

    def probe_rows(self, key_valid: jax.Array) -> jax.Array:
        """Query rows to probe at layer K − 1: int32 [B, 1] (last token; prompts are left-padded) or [B, T]."""
        b, t = key_valid.shape
        if self.criterion == "last":
            return jnp.full((b, 1), t - 1, jnp.int32)
        return jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))

    def token_scores(self, probe: jax.Array, key_valid: jax.Array) -> jax.Array:
        """Head-averaged probabilities of the probed rows [B, R, T] → per-token score [B, T] (mean over valid rows)."""
        if self.criterion == "last":
            return probe[:, 0]
        w = key_valid.astype(probe.dtype)
        return jnp.einsum("brt,br->bt", probe, w) / jnp.maximum(w.sum(1, keepdims=True), 1.0)
