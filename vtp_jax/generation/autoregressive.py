"""Autoregressive generation for LLaVA: a jitted prefill and a jitted decode loop over a static-size KV cache.

- ``prefill``: vision tower → projector → merge → decoder over the (bucket-padded, left-padded) prompt; optional
  pre-LLM pruning (ToDRE stage 1, DivPrune, random) picks ``keep`` visual tokens from the projector outputs and
  compacts the merged prompt to ``T − N_v + keep`` tokens *before* the decoder (so every layer, the KV cache and every
  decode step see the shorter sequence; kept tokens keep their original positions unless the method's ``reindex``);
  optional in-LLM pruning (FastV) compacts the sequence at layer K; returns the first new token and the per-layer
  caches.
- ``decode``: ``lax.while_loop`` over up to ``max_new_tokens − 1`` steps; the caches are donated; stops early once
  every row has produced EOS. Finished rows are filled with the pad id (as transformers' ``generate`` does).

Both are compiled once per (batch, bucket length, max_new_tokens, method) and reused: a new prompt in the same
bucket, or a new temperature / top-p / seed, does not recompile.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vtp_jax.generation.sampling import sample_token
from vtp_jax.modeling.decoder import SequenceState
from vtp_jax.pruning.core import compact, select_topk, visual_scores


class PrefillResult(NamedTuple):
    token: jax.Array  # int32 [B] first generated token
    caches: list  # LayerCache per decoder layer
    next_pos: jax.Array  # int32 [B] position of the next token
    kept: jax.Array  # int32 [B, keep] kept visual indices (all of them when unpruned)
    key: jax.Array  # PRNG key to continue with


@dataclasses.dataclass
class GenerationOutput:
    """tokens: int [B, max_new_tokens] (pad after EOS); kept: int [B, keep]; timings in seconds."""

    tokens: np.ndarray
    kept: np.ndarray
    prefill_s: float
    decode_s: float
    num_new_tokens: list[int]

    @property
    def tokens_per_s(self) -> float:
        """Decode throughput: tokens produced by the decode loop (all rows) per second of decode time."""
        produced = sum(max(n - 1, 0) for n in self.num_new_tokens)
        return produced / self.decode_s if self.decode_s > 0 else float("nan")


class AutoregressiveGenerator:
    """Jitted prefill + decode for a :class:`vtp_jax.modeling.llava.Llava` model.

    Args:
      model: the NNX model (split once; the state is passed to the jitted functions, not baked in).
      method: None, a pre-LLM method (stage "pre_llm": ``select(features, cls_attention) → kept`` and
        ``cls_probe(cfg)``, e.g. :class:`vtp_jax.pruning.todre.ToDRE`) or an in-LLM method (stage "in_llm", e.g.
        :class:`vtp_jax.pruning.fastv.FastV`). Raises ValueError for another stage, PruningError for bad options.

    The prefill body runs the stages in order on local state (visual count, visual mask, kept indices), so chaining a
    pre-LLM and an in-LLM method needs only the constructor to accept both.
    """

    def __init__(self, model, method=None):
        self.cfg = model.cfg
        self.method = method
        self._pre = self._in_llm = None
        self._cls_layer = None  # 1-based vision layer whose class-token attention the pre-LLM method reads
        if method is not None:
            if method.stage == "pre_llm":
                self._pre = method
                self._cls_layer = method.cls_probe(self.cfg)
            elif method.stage == "in_llm":
                self._in_llm = method
            else:
                raise ValueError(f"method {method.name!r} (stage {method.stage}) is not supported by this generator")
            method.validate(self.cfg.num_visual_tokens, self.cfg.text.num_hidden_layers)
        self.graphdef, self.state = nnx.split(model)
        self.prefill = jax.jit(self._prefill, static_argnames=("max_new_tokens",))
        self.decode = jax.jit(self._decode, static_argnames=("max_new_tokens",), donate_argnames=("caches",))

    # ---- jitted bodies -------------------------------------------------------------------------------------
    def _prefill(self, state, input_ids, attention_mask, pixel_values, key, temperature, top_p, *, max_new_tokens):
        model = nnx.merge(self.graphdef, state)
        n_v = self.cfg.num_visual_tokens
        if self._cls_layer is None:
            visual, cls_attn = model.image_features(pixel_values), None
        else:
            visual, cls_attn = model.image_features_with_cls(pixel_values, cls_layer=self._cls_layer)
        h, visual_mask = model.embed(input_ids, visual)
        key_valid = attention_mask.astype(bool)
        positions = jnp.maximum(jnp.cumsum(key_valid, axis=1) - 1, 0).astype(jnp.int32)
        seq = SequenceState(h, positions, key_valid)
        kept = jnp.broadcast_to(jnp.arange(n_v, dtype=jnp.int32), (h.shape[0], n_v))
        pre = self._pre
        if pre is not None:  # pre-LLM: the decoder only ever sees the kept visual tokens
            kept = pre.select(visual, cls_attn)
            seq, visual_mask = compact(seq, visual_mask, kept, n_v, reindex=pre.reindex)
            n_v = pre.keep
        method = self._in_llm
        if method is None:
            out = model.language_model(seq, cache_extra=max_new_tokens)
        else:

            def compact_fn(probe, s):
                scores = visual_scores(method.token_scores(probe, s.key_valid), visual_mask, n_v)
                kept = select_topk(scores, method.keep)
                s, _ = compact(s, visual_mask, kept, n_v, reindex=method.reindex)
                return s, {"kept": kept}

            out = model.language_model(
                seq,
                cache_extra=max_new_tokens,
                probe_rows=method.probe_rows(seq.key_valid),
                probe_layers=(method.layer - 1,),
                compact_at=method.layer,
                compact_fn=compact_fn,
            )
            kept = jnp.take_along_axis(kept, out.aux["kept"], axis=1)  # indices into the original visual tokens
        logits = model.logits(out.h[:, -1])
        key, sub = jax.random.split(key)
        token = sample_token(logits, sub, temperature, top_p)
        next_pos = jnp.max(out.state.positions, axis=1) + 1
        return PrefillResult(token, out.caches, next_pos.astype(jnp.int32), kept, key)

    def _decode(self, state, caches, token, next_pos, key, temperature, top_p, eos_ids, pad_id, *, max_new_tokens):
        model = nnx.merge(self.graphdef, state)
        b = token.shape[0]
        out = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(token)
        done = jnp.isin(token, eos_ids)

        def cond(carry):
            i, _, _, _, _, done, _ = carry
            return (i < max_new_tokens) & ~jnp.all(done)

        def body(carry):
            i, tok, pos, caches, key, done, out = carry
            h = model.language_model.embed_tokens(tok)[:, None, :]
            h, caches = model.language_model.decode_step(h, pos[:, None], caches)
            key, sub = jax.random.split(key)
            nxt = sample_token(model.logits(h[:, 0]), sub, temperature, top_p)
            nxt = jnp.where(done, pad_id, nxt)
            out = out.at[:, i].set(nxt)
            return i + 1, nxt, pos + 1, caches, key, done | jnp.isin(nxt, eos_ids), out

        carry = (jnp.int32(1), token, next_pos, caches, key, done, out)
        i, _, _, caches, _, _, out = jax.lax.while_loop(cond, body, carry)
        return out, caches

    # ---- host API ------------------------------------------------------------------------------------------
    def generate(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        pixel_values: np.ndarray,
        *,
        max_new_tokens: int,
        eos_token_ids: tuple[int, ...] = (),
        pad_token_id: int = 0,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> GenerationOutput:
        """Generates up to ``max_new_tokens`` tokens for left-padded prompts.

        input_ids int [B, T] (T a bucket length), attention_mask {0,1} [B, T], pixel_values float32 [B, 3, H, W].
        Returns tokens int [B, max_new_tokens] (EOS included, pad after), kept indices and timings (seconds).
        """
        key = jax.random.key(seed)
        temp, top_p_ = jnp.float32(temperature), jnp.float32(top_p)
        t0 = time.perf_counter()
        pre = self.prefill(
            self.state, jnp.asarray(input_ids, jnp.int32), jnp.asarray(attention_mask, bool),
            jnp.asarray(pixel_values, jnp.float32), key, temp, top_p_, max_new_tokens=max_new_tokens,
        )
        jax.block_until_ready(pre.token)
        t1 = time.perf_counter()
        eos = jnp.asarray(list(eos_token_ids) or [-1], jnp.int32)
        tokens, _caches = self.decode(
            self.state, pre.caches, pre.token, pre.next_pos, pre.key, temp, top_p_, eos, jnp.int32(pad_token_id),
            max_new_tokens=max_new_tokens,
        )
        tokens = np.asarray(jax.block_until_ready(tokens))
        t2 = time.perf_counter()
        counts = [_count_new(row, eos_token_ids) for row in tokens]
        return GenerationOutput(tokens, np.asarray(pre.kept), t1 - t0, t2 - t1, counts)

    def compiled_counts(self) -> dict[str, Any]:
        """Number of compiled variants of each jitted function (for static-shape tests)."""
        return {"prefill": self.prefill._cache_size(), "decode": self.decode._cache_size()}


def _count_new(row: np.ndarray, eos_ids: tuple[int, ...]) -> int:
    """Tokens generated in a row, up to and including the first EOS."""
    for i, tok in enumerate(row):
        if int(tok) in eos_ids:
            return i + 1
    return len(row)
