"""DivPrune (Alvar et al., CVPR 2025, "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models";
code: vbdi/divprune), before the LLM.

Pruning is posed as a Max-Min Diversity Problem over the visual tokens (paper §3) and solved greedily:
  - features: the projector outputs (the LLM embedding space) of the N_v visual tokens, D = 1 − cosine similarity;
  - the first token is the one whose nearest neighbour is farthest: argmax_i min_{j ≠ i} D_ij;
  - then farthest-point selection: repeatedly add argmax_i min_{s ∈ selected} D_is;
  - the kept indices are sorted ascending (the convention of every method here: kept tokens keep their order). The paper's default ratio is 0.098.

Differences from the reference code (written from the description above, not from that code):
  - the first step excludes the diagonal explicitly (the code takes the second-smallest entry of each column of D,
    which is the same unless rounding makes some 1 − cos(x, x) exceed a true neighbour distance);
  - already selected tokens are excluded from later choices, so ``keep`` distinct indices come back even when tokens
    repeat (e.g. LLaDA-V's identical ``image_newline`` tokens), where the code could pick an index twice;
  - similarities are computed in float32 with ``Precision.HIGHEST`` (no TF32 on GPU), so the choice is reproducible.
Ties go to the lower index, also near ties within a relative 1e-5 (:func:`vtp_jax.pruning.core.argbest`: float32
distances of identical tokens, such as the shared ``image_newline``, may differ in the last bit).

Static shapes: ``keep`` is a static Python int and the greedy loop is a ``lax.fori_loop`` of ``keep − 1`` steps. The
N_v × N_v distance matrix is built once per row (N_v = 2880 for LLaVA-NeXT: 33 MB float32 per row).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from vtp_jax.pruning.stages import PreLLMSelection
from vtp_jax.pruning.core import argbest, chosen_mask, fill_selection
from vtp_jax.pruning.registry import register

HIGHEST = jax.lax.Precision.HIGHEST


def unit_rows(x: jax.Array) -> jax.Array:
    """Rows of x [..., D] scaled to unit L2 norm, float32 (zero rows stay zero)."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def max_min_diversify(x_unit: jax.Array, keep: int, valid: jax.Array | None = None,
                      row_keep: jax.Array | None = None) -> jax.Array:
    """DivPrune's greedy max-min selection.

    x_unit: float32 [B, N, D] unit rows; keep: static int in [1, N]. Returns int32 [B, keep], ascending. With
    ``valid`` bool [B, N] and ``row_keep`` int32 [B] (a batch of different visual-token counts): padding slots
    are neither neighbours nor candidates, row b keeps its first ``row_keep[b]`` picks and the bucket is filled by
    :func:`vtp_jax.pruning.core.fill_selection`.
    """
    b, n, _ = x_unit.shape
    rows = jnp.arange(b)
    dist = 1.0 - jnp.einsum("bnd,bmd->bnm", x_unit, x_unit, precision=HIGHEST)  # [B, N, N]
    excluded = jnp.eye(n, dtype=bool)[None]
    if valid is not None:
        excluded = excluded | ~valid[:, None, :]
    nearest = jnp.min(jnp.where(excluded, jnp.inf, dist), axis=2)  # [B, N]
    if valid is not None:
        nearest = jnp.where(valid, nearest, -jnp.inf)
    first = argbest(nearest, largest=True)
    min_dist = dist[rows, first]  # distance to the selected set; −∞ = selected (or padding)
    if valid is not None:
        min_dist = jnp.where(valid, min_dist, -jnp.inf)
    min_dist = min_dist.at[rows, first].set(-jnp.inf)
    chosen = jnp.zeros((b, keep), jnp.int32).at[:, 0].set(first)

    def body(i, carry):
        min_dist, chosen = carry
        c = argbest(min_dist, largest=True)
        min_dist = jnp.minimum(min_dist, dist[rows, c]).at[rows, c].set(-jnp.inf)
        return min_dist, chosen.at[:, i].set(c)

    _, chosen = jax.lax.fori_loop(1, keep, body, (min_dist, chosen))
    if valid is None:
        return jnp.sort(chosen, axis=1)
    return fill_selection(chosen_mask(chosen, row_keep, n), valid, keep)


@register
@dataclasses.dataclass(frozen=True)
class DivPrune(PreLLMSelection):
    """keep: visual tokens kept (static). reindex: renumber positions contiguously after pruning (default: kept
    tokens keep their original positions)."""

    keep: int
    reindex: bool = False

    name = "divprune"
    default_keep_ratio = 0.098  # DivPrune's default pruning ratio (keeps 9.8%)

    def validate(self, num_visual: int, num_layers: int) -> None:
        """Raises PruningError unless 1 ≤ keep ≤ N_v."""
        self.check_keep(num_visual)

    def cls_probe(self, cfg) -> int | None:
        """No vision-tower attention needed."""
        return None

    def select(self, features: jax.Array, cls_attention: jax.Array | None = None, *, valid: jax.Array | None = None,
               row_keep: jax.Array | None = None) -> jax.Array:
        """features: projector outputs [B, N_v, D] (any float dtype) → kept indices int32 [B, keep], ascending.
        ``valid`` / ``row_keep``: a batch of different visual-token counts (see :func:`max_min_diversify`)."""
        return max_min_diversify(unit_rows(features), self.keep, valid, row_keep)
