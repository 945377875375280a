"""Multi-head self-attention (MHA and GQA) with an optional KV cache and attention-row probes.

The output always goes through ``jax.nn.dot_product_attention`` (the fused path; cuDNN on GPU where it applies).
Pruning methods need the softmax probabilities of a few query rows only; ``probe_rows`` computes exactly those rows
with an einsum, never the full T×T map unless every row is asked for.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vtp_jax.modeling.axes import BATCH, EMBED, HEADS, KV_CACHE_AXES, KV_HEADS, SEQUENCE, constrain
from vtp_jax.modeling.layers import linear
from vtp_jax.modeling.rope import apply_rope


class LayerCache(NamedTuple):
    """One decoder layer's KV cache.

    k, v:  [B, S, num_kv_heads, head_dim] — S static slots (prompt length of this layer + max new tokens).
    valid: [B, S] bool — slot holds a real (non-padding, already written) key.
    end:   int32 scalar — the next slot to write (the same for every row: prompts are left-padded).
    """

    k: jax.Array
    v: jax.Array
    valid: jax.Array
    end: jax.Array

    @staticmethod
    def from_prefill(k: jax.Array, v: jax.Array, key_valid: jax.Array, extra: int) -> "LayerCache":
        """Cache with the T prompt keys in slots [0, T) and ``extra`` empty slots after them."""
        pad = [(0, 0), (0, extra), (0, 0), (0, 0)]
        return LayerCache(
            jnp.pad(k, pad), jnp.pad(v, pad), jnp.pad(key_valid, [(0, 0), (0, extra)]), jnp.int32(k.shape[1])
        ).laid_out()

    def laid_out(self) -> "LayerCache":
        """The cache split along batch (``data``) and key / value heads (``tensor``), every slot of the sequence on
        each device, under the generators' mesh context (:func:`vtp_jax.modeling.axes.constrain`; unchanged
        without one)."""
        return LayerCache(constrain(self.k, KV_CACHE_AXES), constrain(self.v, KV_CACHE_AXES),
                          constrain(self.valid, (BATCH, SEQUENCE)), self.end)

    def append(self, k: jax.Array, v: jax.Array) -> "LayerCache":
        """Writes one step's keys/values [B, 1, K, D] at slot ``end``."""
        idx = (0, self.end, 0, 0)
        return LayerCache(
            jax.lax.dynamic_update_slice(self.k, k.astype(self.k.dtype), idx),
            jax.lax.dynamic_update_slice(self.v, v.astype(self.v.dtype), idx),
            jax.lax.dynamic_update_slice(self.valid, jnp.ones((k.shape[0], 1), bool), (0, self.end)),
            self.end + 1,
        )


def mask_free_attention(attention_mask) -> bool:
    """Whether the generators should call the decoder with ``all_valid=True`` (no explicit attention mask, so
    ``jax.nn.dot_product_attention`` may take the cuDNN kernel): on a GPU backend, when the host-side
    ``attention_mask`` [B, T] has no padding. Left padding (prompts of a batch padded to a bucket) needs the
    explicit mask — cuDNN's sequence lengths describe right padding only — so padded batches, and every other
    backend (where the XLA kernel is used either way and a mask-free variant would only add a compilation), keep
    the mask."""
    return jax.default_backend() == "gpu" and bool(np.all(np.asarray(attention_mask)))


def mask_free_kwargs(attention_mask) -> dict:
    """``{"all_valid": True}`` when :func:`mask_free_attention` holds, else ``{}``, for the generators' jitted
    calls: the static flag is passed only when set, so a caller that omits it (the default, False) shares the same
    compiled function instead of adding a second cache entry."""
    return {"all_valid": True} if mask_free_attention(attention_mask) else {}


def attention_rows(
    q: jax.Array, k: jax.Array, rows: jax.Array, mask: jax.Array, scale: float
) -> jax.Array:
    """Softmax attention probabilities for selected query rows, float32 [B, heads, R, S].

    q: [B, T, H, D] (after RoPE); k: [B, S, K, D] with H a multiple of K (GQA); rows: int [B, R] query indices;
    mask: bool [B, 1 or H, T or 1, S] — the same mask the fused attention uses. Masked keys get probability 0.
    """
    b, _, h, d = q.shape
    kv = k.shape[2]
    q_rows = jnp.take_along_axis(q, rows[:, :, None, None], axis=1)  # [B, R, H, D]
    q_rows = q_rows.reshape(b, rows.shape[1], kv, h // kv, d)
    logits = jnp.einsum("brkgd,bskd->bkgrs", q_rows.astype(jnp.float32), k.astype(jnp.float32)) * scale
    logits = logits.reshape(b, h, rows.shape[1], k.shape[1])
    # The mask may have a broadcast query axis (bidirectional: [B, 1, 1, S]); expand it before picking rows.
    mask = jnp.broadcast_to(mask, mask.shape[:2] + (q.shape[1], k.shape[1]))
    row_mask = jnp.take_along_axis(mask, rows[:, None, :, None], axis=2)  # [B, 1|H, R, S]
    logits = jnp.where(row_mask, logits, -jnp.inf)
    probs = jax.nn.softmax(logits, axis=-1)
    return jnp.where(row_mask, probs, 0.0)


def cached_attention(
    q: jax.Array, cache: LayerCache, scale: float, *, return_probs: bool = False
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Decode-step attention of q [B, T, H, D] over every valid cache slot → [B, T, H, D] (and, with
    ``return_probs``, the softmax probabilities float32 [B, H, T, S]; invalid slots 0 — DyRate reads them).

    Grouped einsums read the cache in its stored [B, S, K, D] layout; the fused ``dot_product_attention`` call
    transposed the whole cache on every decode step (measured on CPU: ~1 ms of a ~6.8 ms step, see eval/bench.py).
    """
    b, t, h, d = q.shape
    kv = cache.k.shape[2]
    qg = q.reshape(b, t, kv, h // kv, d)
    logits = jnp.einsum("btkgd,bskd->bkgts", qg, cache.k.astype(q.dtype)) * scale
    logits = jnp.where(cache.valid[:, None, None, None, :], logits.astype(jnp.float32), -jnp.inf)
    probs32 = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bkgts,bskd->btkgd", probs32.astype(q.dtype), cache.v.astype(q.dtype))
    out = out.reshape(b, t, h, d)
    if return_probs:
        return out, probs32.reshape(b, h, t, -1)
    return out


def window_keys(cache: LayerCache, k: jax.Array, v: jax.Array, start, fresh_from) -> LayerCache:
    """The keys a window of W rows at sequence slots [start, start + W) attends to: the cache, with the window's
    slots ≥ ``fresh_from`` replaced by this step's k, v [B, W, K, D] (slots before it keep their cached values —
    Fast-dLLM's prefix cache computes them but attends to the cached ones). ``start`` / ``fresh_from``: int32
    scalars (traced). Returns a LayerCache of the cache's shape (not stored: the caller's cache is unchanged)."""
    b, w = k.shape[:2]
    slots = start + jnp.arange(w)
    fresh = (slots >= fresh_from)[None, :, None, None]
    idx = (0, start, 0, 0)
    old_k = jax.lax.dynamic_slice(cache.k, idx, k.shape)
    old_v = jax.lax.dynamic_slice(cache.v, idx, v.shape)
    new_k = jnp.where(fresh, k.astype(cache.k.dtype), old_k)
    new_v = jnp.where(fresh, v.astype(cache.v.dtype), old_v)
    return cache._replace(k=jax.lax.dynamic_update_slice(cache.k, new_k, idx),
                          v=jax.lax.dynamic_update_slice(cache.v, new_v, idx))


class Attention(nnx.Module):
    """Self-attention with projections ``q_proj, k_proj, v_proj, o_proj`` (CLIP/SigLIP's ``out_proj`` maps to
    ``o_proj`` in the converter). RoPE is applied when ``cos``/``sin`` are given (decoders), not otherwise (ViTs).

    Logical axis names of the kernels (:mod:`vtp_jax.modeling.axes`): q ``(embed_axis, heads_axis)``, k and v
    ``(embed_axis, kv_heads_axis)``, o ``(heads_axis, embed_axis)``; each bias takes its kernel's output name. The
    defaults are the language model's; the ViTs pass their own.
    """

    def __init__(
        self,
        hidden: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        qkv_bias: bool,
        out_bias: bool,
        dtype,
        rngs: nnx.Rngs,
        embed_axis: str | None = EMBED,
        heads_axis: str | None = HEADS,
        kv_heads_axis: str | None = KV_HEADS,
    ):
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        q, kv = (embed_axis, heads_axis), (embed_axis, kv_heads_axis)
        self.q_proj = linear(hidden, num_heads * head_dim, bias=qkv_bias, dtype=dtype, rngs=rngs, axes=q)
        self.k_proj = linear(hidden, num_kv_heads * head_dim, bias=qkv_bias, dtype=dtype, rngs=rngs, axes=kv)
        self.v_proj = linear(hidden, num_kv_heads * head_dim, bias=qkv_bias, dtype=dtype, rngs=rngs, axes=kv)
        self.o_proj = linear(num_heads * head_dim, hidden, bias=out_bias, dtype=dtype, rngs=rngs,
                             axes=(heads_axis, embed_axis))

    def __call__(
        self,
        x: jax.Array,
        *,
        mask: jax.Array | None = None,
        cos: jax.Array | None = None,
        sin: jax.Array | None = None,
        cache: LayerCache | None = None,
        probe_rows: jax.Array | None = None,
        is_causal: bool = False,
        window: tuple | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | LayerCache, jax.Array | None]:
        """x [B, T, hidden] → (out [B, T, hidden], new keys/values or updated cache, probe probabilities).

        Without a cache: keys are this call's own T tokens, ``mask`` bool [B, 1, T, T] (or None: all visible);
        returns ``(k, v)`` [B, T, K, D] for the caller to cache. With a cache (decode, T = 1): the step's key is
        appended at ``cache.end`` and the query attends to every valid slot; returns the updated cache.
        ``probe_rows`` int [B, R] → probabilities float32 [B, H, R, T], else None; with a cache any non-None
        ``probe_rows`` asks for the step's own rows → float32 [B, H, T, S] over the cache slots.
        ``is_causal`` (with ``mask=None``): causal attention without an explicit mask, which lets
        ``jax.nn.dot_product_attention`` take the cuDNN kernel on GPU (an explicit boolean mask forces XLA's).
        ``window`` (start, fresh_from), with a full-sequence ``cache`` (masked diffusion): x holds the T rows at
        slots [start, start + T); they attend to :func:`window_keys` (bidirectional, every valid slot); returns
        those keys as the second value, the cache itself unchanged.
        """
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        if cos is not None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        scale = self.head_dim**-0.5
        if window is not None:  # approximate KV caching (masked diffusion): the window over the cached keys
            keys = window_keys(cache, k, v, *window)
            return self.o_proj(cached_attention(q, keys, scale).reshape(b, t, -1)), keys, None
        if cache is not None:
            cache = cache.append(k, v)
            if probe_rows is not None:  # decode: the probe is the step's own query row(s)
                out, probs = cached_attention(q, cache, scale, return_probs=True)
                return self.o_proj(out.reshape(b, t, -1)), cache, probs
            out = cached_attention(q, cache, scale)
            return self.o_proj(out.reshape(b, t, -1)), cache, None
        if mask is not None and is_causal:
            raise ValueError("give either an explicit mask or is_causal, not both")
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, is_causal=is_causal)
        probs = None
        if probe_rows is not None:
            full = mask
            if mask is None:
                full = jnp.tril(jnp.ones((t, t), bool)) if is_causal else jnp.ones((t, t), bool)
                full = full[None, None]
            probs = attention_rows(q, k, probe_rows, full, scale)
        return self.o_proj(out.reshape(b, t, -1)), (k, v), probs
