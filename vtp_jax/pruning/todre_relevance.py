"""ToDRE stage 2 — task relevance inside the LLM (arXiv 2505.18757, "ToDRE", stage 2; no public code; summarised
in the paper's description of stage 2). Stage 1 (diversity before the LLM) is :mod:`vtp_jax.pruning.todre`.

Algorithm (per sample, during prefill):
  - at decoder layer ℓ (``layer``; default ⌊7L/8⌋, 28 of 32 for a 7B Llama), A = the head-averaged softmax attention
    of layer ℓ over the prompt rows. Only that layer's rows are computed (``attention_rows`` from layer ℓ's
    ``q``/``k`` projections of its input, i.e. the attention layer ℓ would compute over the full sequence); every
    layer still runs the fused attention;
  - S / V / T = valid tokens before the visual span / the visual tokens (after any stage-1 pruning) / valid tokens
    after the visual span;
  - α_t→v = Σ_{i∈T, j∈V} A_ij / Σ_{i∈T, j∈S∪V∪T} A_ij and α_v→t = Σ_{i∈V, j∈T} A_ij / Σ_{i∈V, j∈S∪V∪T} A_ij;
  - if both are below ``tau`` (default 0.10) the sample drops **all** its remaining visual tokens from layer ℓ on
    (layer ℓ itself runs without them), for the rest of prefill and all decoding (the KV cache of layers ≥ ℓ holds
    no visual key). Layers < ℓ keep their full cache.

Note: under LLaVA's causal mask a visual query cannot see the text after the image, so α_v→t is exactly 0 when the
prompt's text follows the image (the usual LLaVA template); the decision is then α_t→v < τ. It is computed as
specified anyway (it is non-zero for bidirectional decoders).

Static shapes (the decision is data dependent): the generator splits prefill at layer ℓ.
  1. ``prefill_head`` (compiled once per bucket): vision, stage 1, layers < ℓ, their caches, and α [B] × 2;
  2. the host reads α and compares with ``tau`` (``tau`` never enters compiled code: changing it does not recompile);
  3. one of two compiled continuations (layers ≥ ℓ, first token):
     - every sample fired → the visual tokens are compacted away (:func:`vtp_jax.pruning.core.compact` with an empty
       kept set: the sequence really shrinks to T − N_v, so layers ≥ ℓ and every decode step do less work);
     - otherwise → full length; samples that fired have their visual keys masked out (``key_valid`` false) in
       layers ≥ ℓ and in those layers' caches. A batch needs one static length, and a sample that did not fire
       needs its visual tokens, so a mixed batch pays full-length compute; the result of each row equals its own
       single-sample run (masked keys get probability exactly 0).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from vtp_jax.pruning.stages import AllOrNothingGate
from vtp_jax.pruning.core import PruningError
from vtp_jax.pruning.registry import register


def span_masks(key_valid: jax.Array, visual_mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(S, V, T) token masks, bool [B, T] each: valid tokens before the first visual token, the valid visual tokens
    (a row's padding slots in a batch of different visual-token counts are in none of the three), valid tokens after
    the last visual token."""
    t = visual_mask.shape[1]
    idx = jnp.arange(t)[None]
    first = jnp.min(jnp.where(visual_mask, idx, t), axis=1, keepdims=True)
    last = jnp.max(jnp.where(visual_mask, idx, -1), axis=1, keepdims=True)
    return key_valid & (idx < first) & ~visual_mask, key_valid & visual_mask, key_valid & (idx > last) & ~visual_mask


def relevance_ratios(probs: jax.Array, key_valid: jax.Array, visual_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """ToDRE's two ratios from head-averaged attention probabilities.

    probs: float32 [B, T, T] (rows = every query position, keys = every position; masked keys 0); key_valid,
    visual_mask: bool [B, T]. Returns (α_t→v, α_v→t), float32 [B] each (0 where a denominator is 0).
    """
    s, v, t = (m.astype(jnp.float32) for m in span_masks(key_valid, visual_mask))
    allk = s + v + t

    def block(rows, cols):
        return jnp.einsum("bi,bij,bj->b", rows, probs, cols)

    def ratio(num, den):
        return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)

    return ratio(block(t, v), block(t, allk)), ratio(block(v, t), block(v, allk))


@register
@dataclasses.dataclass(frozen=True)
class ToDRERelevance(AllOrNothingGate):
    """ToDRE stage 2. tau: threshold of both ratios (default 0.10; host-side only). layer: ℓ in [1, L − 1]
    (None = ⌊7L/8⌋)."""

    tau: float = 0.10
    layer: int | None = None

    name = "todre-relevance"

    def resolve_layer(self, num_layers: int) -> int:
        """ℓ: ``layer`` or ⌊7L/8⌋ (at least 1)."""
        return self.layer if self.layer is not None else max(1, (7 * num_layers) // 8)

    def validate(self, num_visual: int, num_layers: int) -> None:
        """Raises PruningError unless 1 ≤ ℓ < num_layers and 0 ≤ tau ≤ 1."""
        layer = self.resolve_layer(num_layers)
        if not 1 <= layer < num_layers:
            raise PruningError(f"ToDRE stage-2 layer must be in [1, {num_layers - 1}] for a {num_layers}-layer decoder, got {layer}")
        if not 0.0 <= self.tau <= 1.0:
            raise PruningError(f"ToDRE tau must be in [0, 1], got {self.tau}")

    def fires(self, alpha_t2v: np.ndarray, alpha_v2t: np.ndarray) -> np.ndarray:
        """Host-side decision, bool [B]: both ratios below ``tau``."""
        return (np.asarray(alpha_t2v) < self.tau) & (np.asarray(alpha_v2t) < self.tau)
