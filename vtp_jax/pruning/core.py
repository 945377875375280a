"""The select-and-compact machinery every pruning method shares.

Selection is a top-``keep`` over per-visual-token scores (``keep`` a static Python int), sorted ascending so kept
tokens stay in their original order (FastV's and RedVTP's code gather kept indices in ascending order). Compaction physically gathers the sequence to the
shorter static length ``T − N_v + keep``, so every later layer really does less work.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vtp_jax.modeling.decoder import SequenceState


class PruningError(ValueError):
    """Invalid pruning options (keep out of range, layer out of range, unknown method…)."""


def resolve_keep(
    num_visual: int, keep: int | None = None, keep_ratio: float | None = None, *, rounding: str = "round"
) -> int:
    """Turns ``keep`` or ``keep_ratio`` into a keep count in [1, num_visual].

    ``rounding="round"``: ``round(N_v · ratio)`` (FastV's ``round(N_v · (1 − R))``); ``"floor"``:
    ``int(N_v · ratio)`` (the RedVTP code's ``max(1, int(N_v · keep_ratio))``); at least 1 either way.
    Raises PruningError when neither/both are given or the count falls outside [1, N_v].
    """
    if (keep is None) == (keep_ratio is None):
        raise PruningError("give exactly one of keep / keep_ratio")
    if keep_ratio is not None:
        if not 0.0 < keep_ratio <= 1.0:
            raise PruningError(f"keep ratio must be in (0, 1], got {keep_ratio}")
        scaled = num_visual * keep_ratio
        keep = max(1, int(round(scaled)) if rounding == "round" else int(scaled))
    if not 1 <= keep <= num_visual:
        raise PruningError(f"keep must be between 1 and the number of visual tokens ({num_visual}), got {keep}")
    return int(keep)


def select_topk(scores: jax.Array, keep: int) -> jax.Array:
    """Indices of the ``keep`` highest scores per row, ascending: scores float [B, N] → int32 [B, keep].

    Ties go to the lower index (``lax.top_k``'s order), matching ``torch.topk`` on distinct values.
    """
    _, idx = jax.lax.top_k(scores, keep)
    return jnp.sort(idx, axis=-1).astype(jnp.int32)


def visual_positions(visual_mask: jax.Array, num_visual: int) -> jax.Array:
    """Sequence positions of the visual tokens, in order: bool [B, T] → int32 [B, N_v]."""
    order = jnp.argsort(~visual_mask, axis=1, stable=True)
    return order[:, :num_visual].astype(jnp.int32)


def visual_scores(token_scores: jax.Array, visual_mask: jax.Array, num_visual: int) -> jax.Array:
    """Picks the visual tokens' entries of per-token scores [B, T] → [B, N_v]."""
    return jnp.take_along_axis(token_scores, visual_positions(visual_mask, num_visual), axis=1)


def compact(
    state: SequenceState, visual_mask: jax.Array, kept: jax.Array, num_visual: int, *, reindex: bool = False
) -> tuple[SequenceState, jax.Array]:
    """Drops the visual tokens not in ``kept`` from the sequence.

    Args:
      state: h [B, T, D], positions int32 [B, T], key_valid bool [B, T].
      visual_mask: bool [B, T] with exactly N_v True per row.
      kept: int32 [B, keep], ascending indices into the visual token sequence.
      num_visual: N_v (static).
      reindex: renumber positions contiguously (0..) over valid tokens; default keeps the original positions
        (FastV's behaviour).
    Returns: (state of length T − N_v + keep, visual_mask of that length).
    """
    b, t = visual_mask.shape
    keep, n_v = kept.shape[1], num_visual
    vis_pos = visual_positions(visual_mask, n_v)
    kept_pos = jnp.take_along_axis(vis_pos, kept, axis=1)
    keep_mask = (~visual_mask).at[jnp.arange(b)[:, None], kept_pos].set(True)
    new_len = t - n_v + keep
    order = jnp.argsort(~keep_mask, axis=1, stable=True)[:, :new_len]
    take = lambda x: jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), axis=1)
    h, positions, key_valid, vmask = take(state.h), take(state.positions), take(state.key_valid), take(visual_mask)
    if reindex:
        positions = jnp.maximum(jnp.cumsum(key_valid, axis=1) - 1, 0).astype(positions.dtype)
    return SequenceState(h, positions, key_valid), vmask
