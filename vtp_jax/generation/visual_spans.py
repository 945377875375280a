"""Batches whose rows hold different numbers of visual tokens (LLaVA-NeXT's and LLaDA-V's anyres layouts, one per
image): the host-side layout both generators use.

**Padded visual spans.** A processor's rows hold N_v[b] image placeholders each, left-padded to one length. The
generators rewrite them so that every row holds N = max_b N_v[b] placeholder slots: the N − N_v[b] extra slots go
right after the row's last placeholder with ``attention_mask`` 0, so they are masked keys (probability exactly 0 for
every query) and take no RoPE position (positions are ``cumsum(mask) − 1``). The model packs each image with its own
layout and zero-pads its visual tokens to N (:meth:`vtp_jax.modeling.anyres_vlm.AnyresVisionLanguageModel.pack_rows`),
which fill the slots in order, so row b's real visual tokens are its first N_v[b] and its padding the trailing
N − N_v[b]. Each row therefore computes what it would alone, up to float summation order.

**Keep buckets.** A method with a keep ratio keeps ``round(ratio · N_v[b])`` tokens of row b (``floor`` for the
families that floor; :meth:`vtp_jax.pruning.stages.KeepCount.row_keeps`); a method with a fixed keep count keeps
that many in every row. Under ``jit`` the method runs with the static bucket ``K = max_b k_b`` and the per-row counts
as a traced int32 [B] array: each row's selection is its own ``k_b`` tokens plus padding slots
(:func:`vtp_jax.pruning.core.fill_selection`), which stay masked after compaction. Compilation is keyed by the image
layouts (static anyway), N and K — not by the per-row counts.

Kept indices come back per row in the original visual-token order, −1 after a row's own ``k_b`` (an
:func:`unpad_kept` of the compiled result).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RowCounts:
    """Per-row visual-token counts of a batch with padded visual spans (a pytree of traced arrays; a stage absent
    from the generator leaves its field None).

    counts int32 [B]: N_v[b] (real visual tokens of row b); pre_keep int32 [B]: what the pre-LLM stage keeps of
    each row; later_keep int32 [B]: what the in-LLM / after-first-step stage keeps of what reaches it;
    dyrate_counts int32 [B, R]: DyRate's keep count of each row at each rate."""

    counts: jax.Array
    pre_keep: jax.Array | None = None
    later_keep: jax.Array | None = None
    dyrate_counts: jax.Array | None = None

    @staticmethod
    def of(counts, pre_keep=None, later_keep=None, dyrate_counts=None) -> "RowCounts":
        """The pytree from host arrays (NumPy int; None where a stage is absent), as int32."""
        as_array = lambda a: None if a is None else jax.numpy.asarray(a, jax.numpy.int32)
        return RowCounts(as_array(counts), as_array(pre_keep), as_array(later_keep), as_array(dyrate_counts))


def visual_counts(input_ids: np.ndarray, image_token_id: int) -> np.ndarray:
    """Image placeholders per row: input_ids int [B, T] → int64 [B]."""
    return np.sum(np.asarray(input_ids) == image_token_id, axis=1)


def pad_visual_spans(input_ids: np.ndarray, attention_mask: np.ndarray, image_token_id: int, *,
                     bucket: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gives every row N = max_b N_v[b] image placeholder slots (see the module doc).

    input_ids, attention_mask int [B, T], left-padded (1 = real token), each row's placeholders contiguous.
    Returns (input_ids int32 [B, T'], attention_mask int32 [B, T'], counts int64 [B] = N_v[b]); T' = T when the
    padded rows still fit, else the longest padded row rounded up to a multiple of ``bucket``. Unchanged (but for
    the dtype) when every row already holds N placeholders. Raises ValueError for a row whose placeholders are not
    one contiguous run, or whose attention mask is not left padding.
    """
    ids = np.asarray(input_ids)
    mask = np.asarray(attention_mask).astype(np.int32)
    counts = visual_counts(ids, image_token_id)
    if counts.size == 0 or np.all(counts == counts.max()):
        return ids.astype(np.int32), mask, counts
    n = int(counts.max())
    rows, masks = [], []
    for b in range(ids.shape[0]):
        real = np.flatnonzero(mask[b])
        if real.size and not np.all(mask[b, real[0]:] == 1):
            raise ValueError(f"row {b}: the attention mask is not left padding")
        tokens = ids[b, real[0]:] if real.size else ids[b, :0]
        where = np.flatnonzero(tokens == image_token_id)
        if where.size and where[-1] - where[0] + 1 != where.size:
            raise ValueError(f"row {b}: its {where.size} image placeholders are not one contiguous run")
        cut = int(where[-1]) + 1 if where.size else tokens.size
        extra = n - int(counts[b])
        rows.append(np.concatenate([tokens[:cut], np.full(extra, image_token_id, ids.dtype), tokens[cut:]]))
        masks.append(np.concatenate([np.ones(cut, np.int32), np.zeros(extra, np.int32),
                                     np.ones(tokens.size - cut, np.int32)]))
    longest = max(r.size for r in rows)
    t = ids.shape[1] if longest <= ids.shape[1] else -(-longest // bucket) * bucket
    pad_id = ids[0, 0] if not mask[0, 0] else 0
    out_ids = np.full((len(rows), t), pad_id, np.int32)
    out_mask = np.zeros((len(rows), t), np.int32)
    for b, (r, m) in enumerate(zip(rows, masks)):
        out_ids[b, t - r.size:] = r
        out_mask[b, t - r.size:] = m
    return out_ids, out_mask, counts


def static_value(value):
    """A static image argument as a hashable value for ``jit``: lists and tuples (also nested: per-row image sizes
    and grids) become tuples."""
    if isinstance(value, (list, tuple)):
        return tuple(static_value(v) for v in value)
    return value


def with_bucket(method, bucket: int | None):
    """The method as traced: a frozen-dataclass copy with its static keep set to ``bucket`` (the batch's keep
    bucket); unchanged when ``bucket`` is None (every row holds the same N_v)."""
    return method if bucket is None else dataclasses.replace(method, keep=int(bucket))


def bucket(keeps: np.ndarray | None) -> int | None:
    """The static keep bucket of per-row keep counts: their maximum (None for an absent stage)."""
    return None if keeps is None else int(np.max(keeps))


def stage_keeps(pre, later, counts: np.ndarray, num_layers: int):
    """Per-row keep counts of a pre-LLM method ``pre`` and of the method ``later`` that sees what ``pre`` keeps
    (in-LLM or after the first denoising step); either may be None. Each is validated (with its keep set to the
    bucket) against the largest row it sees. Returns (pre_keep int32 [B] | None, later_keep int32 [B] | None,
    reach int64 [B]: the visual tokens reaching the decoder per row). Raises PruningError."""
    reach = np.asarray(counts, np.int64)
    pre_keep = later_keep = None
    if pre is not None:
        pre_keep = pre.row_keeps(reach)
        with_bucket(pre, bucket(pre_keep)).validate(int(reach.max()), num_layers)
        reach = pre_keep.astype(np.int64)
    if later is not None:
        later_keep = later.row_keeps(reach)
        with_bucket(later, bucket(later_keep)).validate(int(reach.max()), num_layers)
    return pre_keep, later_keep, reach


def unpad_kept(kept: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """Kept visual indices int [B, K] with the padding slots of each row (index ≥ ``limit[b]``, its N_v) set to −1
    and moved to the end; the real ones stay ascending."""
    kept = np.asarray(kept).astype(np.int64)
    limit = np.asarray(limit).reshape(-1, 1)
    marked = np.where(kept < limit, kept, np.iinfo(np.int64).max)
    marked = np.sort(marked, axis=1)
    return np.where(marked == np.iinfo(np.int64).max, -1, marked)
