"""The select-and-compact machinery every pruning method shares.

Selection is a top-``keep`` over per-visual-token scores (``keep`` a static Python int), sorted ascending so kept
tokens stay in their original order (FastV's and RedVTP's code gather kept indices in ascending order). Compaction
physically gathers the sequence to the shorter static length ``T − N_v + keep``, so every later layer really does
less work.

Variable visual-token counts in one batch: every row's visual span is padded to one bucket of N slots (the batch's
largest N_v; padding slots have ``key_valid`` False and take no position, see
:func:`vtp_jax.generation.visual_spans.pad_visual_spans`). Row ``b`` keeps its own count ``k_b`` (``round(ratio ·
N_v[b])``) inside the static keep bucket ``keep = max_b k_b``: the selection returns ``keep`` indices per row, the
``k_b`` chosen ones plus padding slots (:func:`fill_selection`), so after :func:`compact` the row's extra slots
are still masked and every row computes what it would alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vtp_jax.modeling.axes import BATCH, SEQUENCE, constrain
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


TIE_RTOL = 1e-5  # relative gap under which the greedy selections treat two scores as tied (→ lower index)


def argbest(values: jax.Array, *, largest: bool, rtol: float = TIE_RTOL) -> jax.Array:
    """Index of the best value per row with float-robust ties: values float [B, N] → int32 [B], the lowest index
    whose value is within ``rtol · (1 + |best|)`` of the row's max (``largest``) or min.

    Why: the greedy diversity selections (ToDRE, DivPrune) meet exact ties by construction — LLaDA-V's and
    LLaVA-NeXT's ``image_newline`` tokens are one shared vector — and float32 similarities of identical vectors
    can differ in the last bit with the array length and layout (measured: the winner among six newline tokens
    changed between a batch of one image and the same image padded in a batch of two). Within the tolerance the
    lower index wins, as ``torch.argmax`` / ``argmin`` do on exact ties, so the choice no longer depends on the
    batch. ±inf entries (excluded or selected tokens) are never within the tolerance of a finite best.
    """
    values = constrain(values, (BATCH, SEQUENCE))  # every token of a row on each device (greedy diversity loops)
    best = jnp.max(values, axis=1, keepdims=True) if largest else jnp.min(values, axis=1, keepdims=True)
    tol = rtol * (1.0 + jnp.abs(jnp.where(jnp.isfinite(best), best, 0.0)))
    near = values >= best - tol if largest else values <= best + tol
    return jnp.argmax(near, axis=1).astype(jnp.int32)


def select_topk(scores: jax.Array, keep: int, valid: jax.Array | None = None,
                row_keep: jax.Array | None = None) -> jax.Array:
    """Indices of the ``keep`` highest scores per row, ascending: scores float [B, N] → int32 [B, keep].

    Ties go to the lower index (``lax.top_k``'s order), matching ``torch.topk`` on distinct values.

    Variable visual-token counts (a batch whose rows hold different N_v, padded to one bucket N): ``valid`` bool
    [B, N] marks each row's real visual tokens and ``row_keep`` int32 [B] (≤ ``keep``) how many of them row ``b``
    keeps; the result is then :func:`fill_selection` of the ``row_keep[b]`` best valid tokens (``keep`` is the
    static bucket). Both or neither must be given.
    """
    scores = constrain(scores, (BATCH, SEQUENCE))  # the top-k runs along a whole sequence axis
    if valid is None:
        _, idx = jax.lax.top_k(scores, keep)
        return jnp.sort(idx, axis=-1).astype(jnp.int32)
    s = jnp.where(valid, scores.astype(jnp.float32), -jnp.inf)
    order = jnp.argsort(-s, axis=1, stable=True)  # descending, ties → lower index
    rank = jnp.argsort(order, axis=1)
    return fill_selection(valid & (rank < row_keep[:, None]), valid, keep)


def fill_selection(chosen: jax.Array, valid: jax.Array, keep: int) -> jax.Array:
    """A row's chosen visual tokens padded to the static keep bucket with its padding slots.

    chosen bool [B, N] (``k_b ≤ keep`` True per row, all of them valid), valid bool [B, N] (the row's real visual
    tokens) → int32 [B, keep], ascending: the ``k_b`` chosen indices plus ``keep − k_b`` fillers, taken first from
    the row's invalid (padding) slots, so that compaction keeps them masked (their ``key_valid`` stays False) and
    the row computes exactly what a run of its own would. Fillers come from valid unchosen slots only when a row
    has too few padding slots (``N_v[b] − k_b > N − keep``), which the keep rules never produce (the generators
    check it on the host: :func:`vtp_jax.pruning.stages.KeepCount.row_keeps`).
    """
    n = chosen.shape[1]
    priority = jnp.where(chosen, 0, jnp.where(valid, 2, 1))
    order = jnp.argsort(priority * n + jnp.arange(n)[None], axis=1)[:, :keep]
    return jnp.sort(order, axis=1).astype(jnp.int32)


def chosen_mask(picks: jax.Array, row_keep: jax.Array, n: int) -> jax.Array:
    """Greedy picks int [B, K] (selection order) → bool [B, n]: True at the first ``row_keep[b]`` picks of row b."""
    b, k = picks.shape
    take = jnp.arange(k)[None] < row_keep[:, None]
    target = jnp.where(take, picks, n)  # index n: a dump column, dropped
    return jnp.zeros((b, n + 1), bool).at[jnp.arange(b)[:, None], target].set(True)[:, :n]


def visual_valid(key_valid: jax.Array, visual_mask: jax.Array, num_visual: int) -> jax.Array:
    """Which visual slots hold a real visual token: key_valid, visual_mask bool [B, T] → bool [B, N_v] (False at
    the padding slots of a row with fewer visual tokens than the bucket)."""
    return jnp.take_along_axis(key_valid, visual_positions(visual_mask, num_visual), axis=1)


def visual_positions(visual_mask: jax.Array, num_visual: int) -> jax.Array:
    """Sequence positions of the visual tokens, in order: bool [B, T] → int32 [B, N_v]."""
    order = jnp.argsort(~constrain(visual_mask, (BATCH, SEQUENCE)), axis=1, stable=True)
    return order[:, :num_visual].astype(jnp.int32)


def visual_scores(token_scores: jax.Array, visual_mask: jax.Array, num_visual: int) -> jax.Array:
    """Picks the visual tokens' entries of per-token scores [B, T] → [B, N_v]."""
    return jnp.take_along_axis(token_scores, visual_positions(visual_mask, num_visual), axis=1)


def compaction_order(visual_mask: jax.Array, kept: jax.Array, num_visual: int) -> jax.Array:
    """The slots that stay when only the visual tokens ``kept`` (int32 [B, keep], ascending indices into the visual
    tokens) are kept: int32 [B, T − N_v + keep], ascending slot indices into the sequence of ``visual_mask`` bool
    [B, T] (every non-visual slot, padding included, and the kept visual ones). The one gather order of
    :func:`compact` and of the masked-diffusion sampler's cache compaction."""
    b, t = visual_mask.shape
    keep = kept.shape[1]
    kept_pos = jnp.take_along_axis(visual_positions(visual_mask, num_visual), kept, axis=1)
    keep_mask = (~visual_mask).at[jnp.arange(b)[:, None], kept_pos].set(True)
    return jnp.argsort(~keep_mask, axis=1, stable=True)[:, : t - num_visual + keep].astype(jnp.int32)


def compact(
    state: SequenceState, visual_mask: jax.Array, kept: jax.Array, num_visual: int, *, reindex: bool = False
) -> tuple[SequenceState, jax.Array]:
    """Drops the visual tokens not in ``kept`` from the sequence.

    Args:
      state: h [B, T, D], positions int32 [B, T] or [B, T, 3] (M-RoPE; gathered with their tokens), key_valid
        bool [B, T].
      visual_mask: bool [B, T] with exactly N_v True per row.
      kept: int32 [B, keep], ascending indices into the visual token sequence.
      num_visual: N_v (static).
      reindex: renumber positions contiguously (0..) over valid tokens; default keeps the original positions
        (FastV's behaviour).
    Returns: (state of length T − N_v + keep, visual_mask of that length).
    """
    order = compaction_order(visual_mask, kept, num_visual)
    # the gathers run along a whole sequence axis (batch along data; the width as the partitioner likes)
    take = lambda x: constrain(jnp.take_along_axis(constrain(x, (BATCH, SEQUENCE)),
                                                   order.reshape(order.shape + (1,) * (x.ndim - 2)), axis=1),
                               (BATCH, SEQUENCE))
    h, positions, key_valid, vmask = take(state.h), take(state.positions), take(state.key_valid), take(visual_mask)
    if reindex:  # M-RoPE positions [B, T, 3]: one renumbered position on every axis
        flat = jnp.maximum(jnp.cumsum(key_valid, axis=1) - 1, 0).astype(positions.dtype)
        positions = jnp.broadcast_to(flat.reshape(flat.shape + (1,) * (positions.ndim - 2)), positions.shape)
    return SequenceState(h, positions, key_valid), vmask
