"""Random visual token pruning: a uniformly random subset of ``keep`` visual tokens, before the LLM.

A strong baseline per UniPruneBench (its comparison of pruning methods against random selection). The subset of row ``b`` is the top
``keep`` of ``N_v`` i.i.d. uniforms, token ``j``'s drawn with ``fold_in(fold_in(key(seed), b), j)``: every
``keep``-subset is equally likely, the choice depends only on ``(seed, b, N_v, keep)`` — the same on every call with
the same seed, independent of the image, of the prompt and of the batch size (row ``b`` of a batch of 2 gets the
subset row ``b`` of a batch of 8 gets) — and rows of one batch get different subsets. Token ``j``'s draw does not
depend on N_v either, so a row padded to a larger visual bucket (a batch of different visual-token counts) gets the
subset it gets unpadded.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from vtp_jax.pruning.stages import PreLLMSelection
from vtp_jax.pruning.core import PruningError, select_topk
from vtp_jax.pruning.registry import register


@register
@dataclasses.dataclass(frozen=True)
class RandomPrune(PreLLMSelection):
    """keep: visual tokens kept (static). seed: the PRNG seed (explicit; vtp-generate passes ``--seed``).
    reindex: renumber positions contiguously after pruning (default: kept tokens keep their original positions)."""

    keep: int
    seed: int = 0
    reindex: bool = False

    name = "random"

    def validate(self, num_visual: int, num_layers: int) -> None:
        """Raises PruningError unless 1 ≤ keep ≤ N_v and seed is an int."""
        self.check_keep(num_visual)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise PruningError(f"random: seed must be an int, got {self.seed!r}")

    def cls_probe(self, cfg) -> int | None:
        """No vision-tower attention needed."""
        return None

    def select(self, features: jax.Array, cls_attention: jax.Array | None = None, *, valid: jax.Array | None = None,
               row_keep: jax.Array | None = None) -> jax.Array:
        """features [B, N_v, D] (only the shape is read) → kept indices int32 [B, keep], ascending. ``valid`` /
        ``row_keep``: a batch of different visual-token counts (:func:`vtp_jax.pruning.core.select_topk`)."""
        b, n = features.shape[:2]
        base = jax.random.key(self.seed)

        def draw(r, j):
            return jax.random.uniform(jax.random.fold_in(jax.random.fold_in(base, r), j), (), jnp.float32)

        scores = jax.vmap(lambda r: jax.vmap(lambda j: draw(r, j))(jnp.arange(n)))(jnp.arange(b))
        return select_topk(scores, self.keep, valid, row_keep)
