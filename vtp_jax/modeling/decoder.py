"""The one decoder used by both families: Llama (causal) and LLaDA (bidirectional, ``TextConfig.causal=False``).

Llama and LLaDA differ in the attention mask and the sampler, not in the block (ML-GSAI/LLaDA ``modeling_llada.py``: a Llama block without the causal mask). The layer loop lives in
:meth:`Decoder.__call__`, which takes one :class:`DecoderPlan` naming what pruning needs of a pass: probes of
attention rows at chosen layers (:class:`Probe`), a compaction of the sequence before a chosen layer
(:class:`Compaction`, FastV-style in-LLM pruning), a layer range, an extra key mask, decode room for the caches.
It returns one :class:`DecoderOutput`.

Source: transformers ``LlamaDecoderLayer`` / ``LlamaModel`` (pre-norm residual blocks, SwiGLU MLP).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from vtp_jax.config import TextConfig
from vtp_jax.modeling.attention import Attention, LayerCache, attention_rows
from vtp_jax.modeling.axes import EMBED, MLP as MLP_AXIS, VOCAB
from vtp_jax.modeling.layers import RMSNorm, embedding, linear, rms_norm  # noqa: F401 (RMSNorm: re-exported)
from vtp_jax.modeling.rope import apply_rope, inv_frequencies, mrope_angles, rope_angles


class MLP(nnx.Module):
    """SwiGLU: ``down_proj(silu(gate_proj(x)) * up_proj(x))``. Kernels: gate/up (embed, mlp), down (mlp, embed)."""

    def __init__(self, cfg: TextConfig, *, dtype, rngs: nnx.Rngs):
        d, f, bias = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        self.gate_proj = linear(d, f, bias=bias, dtype=dtype, rngs=rngs, axes=(EMBED, MLP_AXIS))
        self.up_proj = linear(d, f, bias=bias, dtype=dtype, rngs=rngs, axes=(EMBED, MLP_AXIS))
        self.down_proj = linear(f, d, bias=bias, dtype=dtype, rngs=rngs, axes=(MLP_AXIS, EMBED))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderBlock(nnx.Module):
    """Pre-norm block: ``h + attn(norm(h))``, then ``h + mlp(norm(h))``."""

    def __init__(self, cfg: TextConfig, *, dtype, rngs: nnx.Rngs):
        self.input_layernorm = rms_norm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype, axis=EMBED)
        self.self_attn = Attention(
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            qkv_bias=cfg.attention_bias or cfg.qkv_bias,
            out_bias=cfg.attention_bias,
            dtype=dtype,
            rngs=rngs,
        )
        self.post_attention_layernorm = rms_norm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype, axis=EMBED)
        self.mlp = MLP(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, h, *, cos, sin, mask=None, cache=None, probe_rows=None, is_causal=False, window=None):
        """h [B, T, D] → (h, new kv or cache, probe probabilities or None); see :class:`Attention`."""
        a, kv, probs = self.self_attn(
            self.input_layernorm(h), mask=mask, cos=cos, sin=sin, cache=cache, probe_rows=probe_rows,
            is_causal=is_causal, window=window,
        )
        h = h + a
        h = h + self.mlp(self.post_attention_layernorm(h))
        return h, kv, probs


def attention_mask(key_valid: jax.Array, causal: bool) -> jax.Array:
    """bool [B, 1, T, T]: key j is visible to query i iff it is valid (and j ≤ i when causal)."""
    t = key_valid.shape[1]
    mask = key_valid[:, None, None, :]
    if causal:
        mask = mask & jnp.tril(jnp.ones((t, t), bool))[None, None]
    return mask


class SequenceState(NamedTuple):
    """What flows between layers: hidden states [B, T, D], positions int32 [B, T] (or [B, T, 3] for M-RoPE:
    temporal, height, width), key_valid bool [B, T]."""

    h: jax.Array
    positions: jax.Array
    key_valid: jax.Array


def next_position(positions: jax.Array) -> jax.Array:
    """The position of the token after a prompt, int32 [B]: the largest position of each row + 1, over the tokens
    and, for M-RoPE positions [B, T, 3], over the three axes (transformers Qwen2.5-VL's ``rope_deltas`` rule: decode
    steps continue from ``max + 1`` on every axis). Positions [B, T] → the same as 1-D RoPE's ``max + 1``."""
    return (jnp.max(positions.reshape(positions.shape[0], -1), axis=1) + 1).astype(jnp.int32)


# (mean probe probabilities float32 [B, R, T], state) -> (shorter state, aux)
CompactFn = Callable[[jax.Array, SequenceState], tuple[SequenceState, dict]]


class DecoderOutput(NamedTuple):
    """What :meth:`Decoder.__call__` returns (always all six fields; unused ones are None / empty)."""

    h: jax.Array  # [B, T', D] final-normed hidden states
    state: SequenceState  # after any compaction
    caches: list | None  # one LayerCache per layer when ``plan.cache_extra`` was given
    probe: jax.Array | None  # mean over heads and probed layers, float32 [B, R, T_probe]
    aux: dict  # whatever the compaction returned (e.g. kept indices)
    probe_heads: jax.Array | None = None  # per-head probabilities of the last probed layer, float32 [B, H, R, T]


@dataclasses.dataclass(frozen=True)
class Probe:
    """Attention rows to read: query rows int [B, R] (an array of the traced pass), at the 0-based ``layers``
    (static). The probe of layer i is its softmax over keys, before the output projection."""

    rows: jax.Array
    layers: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Compaction:
    """Before layer ``at`` (static) call ``fn(probe, state) -> (shorter state, aux)``, with ``probe`` the mean
    probe float32 [B, R, T] of the probed layers before ``at``."""

    at: int
    fn: CompactFn


@dataclasses.dataclass(frozen=True)
class DecoderPlan:
    """Everything a :meth:`Decoder.__call__` pass does besides running its layers; frozen, and every field but the
    arrays inside ``probe.rows`` / ``extra_mask`` is static (Python values that pick the traced program).

    Fields:
      cache_extra: if given, build a :class:`LayerCache` per layer with this many free slots (decode room).
      probe: attention rows averaged over heads and over ``probe.layers`` (:class:`Probe`), or None.
      compaction: shorten the sequence before a layer (:class:`Compaction`; the probe then holds the probed layers
        before it). Layers ≥ ``compaction.at`` run on the shorter sequence; their caches are built from it.
      layer_range: (start, stop) runs only layers [start, stop) on the state (whose ``h`` is then layer ``start``'s
        input); caches are returned for those layers only; ``out.state.h`` is the un-normed output (the input of
        layer ``stop``). None: every layer.
      extra_mask: bool [B, 1, T, T] ANDed with every layer's attention mask (per-row key masks, e.g. the DyRate
        trainer's "row i sees only these visual tokens"); not with ``compaction``.
      all_valid: the caller promises every key of the state is valid (no padding). The fused attention then gets
        no mask — ``is_causal`` for a causal decoder, nothing for a bidirectional one — so on GPU it can take the
        cuDNN kernel, which an explicit boolean mask rules out. Same numbers as the masked path.
    Raises ValueError for ``extra_mask`` with ``compaction`` (the sequence length changes).
    """

    cache_extra: int | None = None
    probe: Probe | None = None
    compaction: Compaction | None = None
    layer_range: tuple[int, int] | None = None
    extra_mask: jax.Array | None = None
    all_valid: bool = False

    def __post_init__(self):
        if self.extra_mask is not None and self.compaction is not None:
            raise ValueError("extra_mask cannot be combined with a compaction (the sequence length changes)")


_PLAIN = DecoderPlan()


class Decoder(nnx.Module):
    """Token embedding, ``num_hidden_layers`` blocks and the final norm (transformers ``LlamaModel``).

    Logical axes: ``embed_tokens`` (vocab, embed), norms (embed,), blocks as in :class:`MLP` / :class:`Attention`."""

    def __init__(self, cfg: TextConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed_tokens = embedding(cfg.vocab_size, cfg.hidden_size, dtype=dtype, rngs=rngs, axes=(VOCAB, EMBED))
        self.layers = nnx.List([DecoderBlock(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.num_hidden_layers)])
        self.norm = rms_norm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype, axis=EMBED)

    def angles(self, positions: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
        # Frequencies are recomputed from the (static) config rather than stored as an array attribute: an array
        # attribute would be module state, which ``nnx.eval_shape`` turns into a ShapeDtypeStruct (abstract load).
        # Positions [B, T] (1-D RoPE, also a M-RoPE model's text-only steps: all three axes equal) or [B, T, 3]
        # (M-RoPE: temporal, height, width).
        inv = inv_frequencies(self.cfg.head_dim, self.cfg.rope)
        if positions.ndim == 3:
            return mrope_angles(positions, inv, self.cfg.rope.mrope_section, dtype)
        return rope_angles(positions, inv, dtype)

    def __call__(self, state: SequenceState, plan: DecoderPlan | None = None) -> DecoderOutput:
        """Runs the layers over the whole sequence (prefill, or one denoising step).

        Args:
          state: hidden states [B, T, D], positions int32 [B, T] and key validity bool [B, T] of the T tokens.
          plan: probes, compaction, layer range, extra mask, cache room and mask-free attention
            (:class:`DecoderPlan`); None: a plain pass over every layer.
        Returns a :class:`DecoderOutput` (h [B, T', D] final-normed; caches when ``plan.cache_extra`` is set; probe
        float32 [B, R, T_probe] and probe_heads when ``plan.probe`` is set; aux from the compaction).
        """
        plan = _PLAIN if plan is None else plan
        cache_extra, extra_mask, all_valid = plan.cache_extra, plan.extra_mask, plan.all_valid
        probe_rows, probe_layers = (plan.probe.rows, plan.probe.layers) if plan.probe is not None else (None, ())
        compact_at, compact_fn = (plan.compaction.at, plan.compaction.fn) if plan.compaction is not None else (None, None)
        layer_range = plan.layer_range
        cfg = self.cfg
        caches = [] if cache_extra is not None else None
        probe_sum, n_probe, aux = None, 0, {}
        probe_mean = probe_heads = None
        start, stop = layer_range if layer_range is not None else (0, len(self.layers))
        for i in range(start, stop):
            layer = self.layers[i]
            if i == compact_at:
                probe_mean = probe_sum / n_probe
                state, aux = compact_fn(probe_mean, state)
            if i == start or i == compact_at:
                cos, sin = self.angles(state.positions, state.h.dtype)
                dense = all_valid and extra_mask is None  # compaction keeps every key valid
                mask = None if dense else attention_mask(state.key_valid, cfg.causal)
                if extra_mask is not None:
                    mask = mask & extra_mask
            rows = probe_rows if i in probe_layers else None
            h, (k, v), probs = layer(state.h, cos=cos, sin=sin, mask=mask, probe_rows=rows,
                                     is_causal=dense and cfg.causal)
            state = state._replace(h=h)
            if probs is not None:
                probe_heads = probs
                p = probs.mean(axis=1)
                probe_sum, n_probe = (p if probe_sum is None else probe_sum + p), n_probe + 1
            if caches is not None:
                caches.append(LayerCache.from_prefill(k, v, state.key_valid, cache_extra))
        if probe_mean is None and probe_sum is not None:
            probe_mean = probe_sum / n_probe
        return DecoderOutput(self.norm(state.h), state, caches, probe_mean, aux, probe_heads)

    def attention_probe(self, index: int, state: SequenceState, rows: jax.Array) -> jax.Array:
        """Head-averaged attention probabilities layer ``index`` would compute on ``state`` (its input), for query
        rows int [B, R] → float32 [B, R, T]. Only the layer's norm, q/k projections and RoPE run (no output)."""
        attn = self.layers[index].self_attn
        x = self.layers[index].input_layernorm(state.h)
        b, t, _ = x.shape
        q = attn.q_proj(x).reshape(b, t, attn.num_heads, attn.head_dim)
        k = attn.k_proj(x).reshape(b, t, attn.num_kv_heads, attn.head_dim)
        cos, sin = self.angles(state.positions, x.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        mask = attention_mask(state.key_valid, self.cfg.causal)
        return attention_rows(q, k, rows, mask, attn.head_dim**-0.5).mean(axis=1)

    def window_step(self, h: jax.Array, positions: jax.Array, caches: list, start, fresh_from) -> jax.Array:
        """One approximate-cache denoising step (Fast-dLLM, arXiv 2505.22618 §3; NVlabs/Fast-dLLM): the W rows of
        h [B, W, D] at sequence slots [start, start + W) (positions int32 [B, W]) run through every layer, each
        attending to that layer's full-sequence cache (:class:`LayerCache`, from the block's first step) with the
        window's slots ≥ ``fresh_from`` replaced by their fresh keys / values (:func:`vtp_jax.modeling.attention.
        window_keys`). The caches are not changed. Returns the normed h [B, W, D]."""
        cos, sin = self.angles(positions, h.dtype)
        for layer, cache in zip(self.layers, caches):
            h, _, _ = layer(h, cos=cos, sin=sin, cache=cache, window=(start, fresh_from))
        return self.norm(h)

    def decode_step(
        self, h: jax.Array, positions: jax.Array, caches: list, *, probe_layer: int | None = None
    ) -> tuple[jax.Array, list, jax.Array | None]:
        """One autoregressive step: h [B, 1, D], positions int32 [B, 1] → (normed h [B, 1, D], updated caches,
        probe). ``probe_layer`` (0-based): also return that layer's softmax attention of the step's query over its
        cache slots, per head, float32 [B, H, S] (invalid slots 0); else the probe is None."""
        cos, sin = self.angles(positions, h.dtype)
        new, probe = [], None
        dummy = jnp.zeros((h.shape[0], 1), jnp.int32)
        for i, (layer, cache) in enumerate(zip(self.layers, caches)):
            h, cache, probs = layer(h, cos=cos, sin=sin, cache=cache, probe_rows=dummy if i == probe_layer else None)
            if probs is not None:
                probe = probs[:, :, 0]
            new.append(cache)
        return self.norm(h), new, probe
