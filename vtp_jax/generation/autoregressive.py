"""Autoregressive generation for causal VLMs (LLaVA, LLaVA-NeXT): a jitted prefill and a jitted decode loop over a
static-size KV cache.

- ``prefill``: vision tower → projector → merge → decoder over the (bucket-padded, left-padded) prompt; optional
  pre-LLM pruning (ToDRE stage 1, DivPrune, random) picks ``keep`` visual tokens from the projector outputs and
  compacts the merged prompt to ``T − N_v + keep`` tokens *before* the decoder (so every layer, the KV cache and every
  decode step see the shorter sequence; kept tokens keep their original positions unless the method's ``reindex``);
  optional in-LLM pruning (FastV) compacts the sequence at layer K; returns the first new token and the per-layer
  caches. ToDRE stage 2 (``todre-relevance``, data-dependent all-or-nothing at layer ℓ) splits prefill in two:
  ``prefill_head`` (layers < ℓ, ratios α) and one of two compiled ``prefill_tail`` shapes picked on the host
  (all rows fired: visual tokens compacted away; else full length with per-row visual-key masks).
- ``decode``: ``lax.while_loop`` over up to ``max_new_tokens − 1`` steps; the caches are donated; stops early once
  every row has produced EOS. Finished rows are filled with the pad id (as transformers' ``generate`` does).

Both are compiled once per (batch, bucket length, max_new_tokens, method, image layout) and reused: a new prompt in
the same bucket, or a new temperature / top-p / seed, does not recompile.

Image inputs are the keyword arguments of the model's ``image_features`` (as for the diffusion generator): a dict whose
arrays are traced (``pixel_values``) and whose other values are static (LLaVA-NeXT's ``image_size`` and ``grid``); a
bare array means ``{"pixel_values": array}`` (LLaVA). The visual-token count N_v is read from the prompt (the image
placeholders of ``input_ids``), so one generator serves images whose N_v differs from call to call (each distinct
N_v / image layout compiles its own prefill). Rows of one batch may hold different N_v (LLaVA-NeXT images of
different aspect ratios, with ``image_size`` / ``grid`` given per row): their visual spans are padded to the
largest and each method keeps its own count per row inside a static keep bucket
(:mod:`vtp_jax.generation.visual_spans`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vtp_jax.sharding import shard_batch, to_host, within_mesh
from vtp_jax.families.base import AUTOREGRESSIVE
from vtp_jax.generation.output import GenerationOutput, count_new_tokens
from vtp_jax.generation.sampling import check_sampler_settings, sample_token
from vtp_jax.modeling.decoder import Compaction, DecoderPlan, Probe, SequenceState, next_position
from vtp_jax.modeling.attention import mask_free_kwargs
from vtp_jax.modeling.layers import compiler_options, loop_invariant_weights, low_precision_weights
from vtp_jax.generation.visual_spans import (
    RowCounts, bucket, pad_visual_spans, stage_keeps, static_value, unpad_kept, with_bucket,
)
from vtp_jax.pruning.core import compact, select_topk, visual_positions, visual_scores, visual_valid
from vtp_jax.pruning import dyrate as dyrate_lib
from vtp_jax.pruning.stages import AllOrNothingGate, DecodePruning, InLLMCompaction, PreLLMSelection
from vtp_jax.pruning.todre_relevance import relevance_ratios


_IN_LLM = (InLLMCompaction, AllOrNothingGate)  # the in-LLM stage's two bases


class PrefillResult(NamedTuple):
    token: jax.Array  # int32 [B] first generated token
    caches: list  # LayerCache per decoder layer
    next_pos: jax.Array  # int32 [B] position of the next token
    kept: jax.Array  # int32 [B, keep] kept visual indices (all of them when unpruned)
    key: jax.Array  # PRNG key to continue with
    kept_pre: jax.Array  # int32 [B, k] the pre-LLM stage's kept indices (all of them without one)
    dyrate: dyrate_lib.DyRateState | None = None  # DyRate's loop state after the prefill's decision, else None


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeResult:
    """What the jitted decode loop returns (a pytree; the DyRate fields are None without DyRate).

    tokens int32 [B, max_new_tokens] (the prefill's token first, pad after EOS); caches: LayerCache per decoder
    layer after the loop; kept_per_token int32 [B, max_new_tokens] visual tokens in the cache when each token was
    generated; rate_per_token int32 [B, max_new_tokens] rate index after it."""

    tokens: jax.Array
    caches: list
    kept_per_token: jax.Array | None = None
    rate_per_token: jax.Array | None = None


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _DecodeCarry:
    """The decode loop's carry: step i int32 [], tok int32 [B] (last token), pos int32 [B] (its next position),
    caches, key (PRNG), done bool [B], out int32 [B, M] (tokens so far), dy (DyRate state or None), kept_log /
    rate_log int32 [B, M] (DyRate's per-token log, or None)."""

    i: jax.Array
    tok: jax.Array
    pos: jax.Array
    caches: list
    key: jax.Array
    done: jax.Array
    out: jax.Array
    dy: dyrate_lib.DyRateState | None
    kept_log: jax.Array | None
    rate_log: jax.Array | None


def split_image_inputs(image_inputs) -> tuple[Any, tuple]:
    """Image inputs → (traced part, static part) for the jitted prefill.

    ``image_inputs``: a bare array (LLaVA's pixel_values float32 [B, 3, H, W]) or a dict of keyword arguments of the
    model's ``image_features`` (e.g. LLaVA-NeXT's ``{"pixel_values": float32 [B, tiles, 3, S, S], "image_size": (h,
    w), "grid": (rows, cols)}``). NumPy / JAX arrays are traced; every other value is static (lists become tuples so
    that it hashes). Returns (pixel_values float32 as a bare array when it is the only array — the pytree LLaVA's
    prefill has always been traced with —, else a dict of float32 / original-dtype arrays; a sorted tuple of (name,
    value) pairs). Raises ValueError for a dict without arrays.
    """
    if not isinstance(image_inputs, dict):
        return jnp.asarray(image_inputs, jnp.float32), ()
    arrays, static = {}, []
    for name, value in image_inputs.items():
        if isinstance(value, (np.ndarray, jax.Array)):
            arrays[name] = jnp.asarray(value, jnp.float32) if name == "pixel_values" else jnp.asarray(value)
        else:
            static.append((name, static_value(value)))
    if not arrays:
        raise ValueError(f"image inputs {sorted(image_inputs)} hold no array (pixel_values missing?)")
    traced = arrays["pixel_values"] if set(arrays) == {"pixel_values"} else arrays
    return traced, tuple(sorted(static))


def _image_kwargs(images, image_static: tuple) -> dict:
    """The keyword arguments of ``image_features`` from the two parts :func:`split_image_inputs` returns."""
    arrays = images if isinstance(images, dict) else {"pixel_values": images}
    return {**arrays, **dict(image_static)}


class AutoregressiveGenerator:
    """Jitted prefill + decode for a :class:`vtp_jax.modeling.llava.Llava` model.

    Args:
      model: the NNX model (split once; the state is passed to the jitted functions, not baked in).
      method: None, one method, or a tuple of methods with at most one per stage:
        - a pre-LLM method (stage "pre_llm": ``select(features, cls_attention) → kept`` and ``cls_probe(cfg)``,
          e.g. :class:`vtp_jax.pruning.todre.ToDRE`);
        - an in-LLM method (stage "in_llm"): :class:`vtp_jax.pruning.fastv.FastV` (top-``keep`` at layer K) or
          :class:`vtp_jax.pruning.todre_relevance.ToDRERelevance` (ToDRE stage 2: all-or-nothing at layer ℓ).
        ``(ToDRE(...), ToDRERelevance(...))`` is the full two-stage ToDRE. Raises ValueError for another stage or
        two methods of one stage, PruningError for bad options.

    The model needs ``image_features(**image_inputs)``, ``image_features_with_cls(**image_inputs, cls_layer=…)`` (for a
    pre-LLM method with a class-token pivot), ``embed``, ``language_model`` and ``logits``
    (:class:`vtp_jax.modeling.llava.Llava`, :class:`vtp_jax.modeling.llava_next.LlavaNext`).

    Methods are validated against ``cfg.num_visual_tokens`` at construction when the config has one (LLaVA's fixed
    N_v; an upper bound for anyres families), and again against each prompt's own N_v at its first ``generate``.

    The prefill runs the stages in order on local state (visual count, visual mask, kept indices). ToDRE stage 2's
    decision is data dependent: prefill is split at layer ℓ into ``prefill_head`` (returns the ratios α) and one of
    two compiled ``prefill_tail`` continuations chosen on the host (see :mod:`vtp_jax.pruning.todre_relevance`).
    """

    def __init__(self, model, method=None, *, mesh=None):
        self.cfg = model.cfg
        self.mesh = mesh  # a jax.sharding.Mesh: inputs are split along its data axis (vtp_jax.sharding)
        methods = () if method is None else tuple(method) if isinstance(method, (tuple, list)) else (method,)
        self.method = method
        self.methods = methods
        self._pre = self._in_llm = self._relevance = self._dyrate = None
        self._cls_layer = None  # 1-based vision layer whose class-token attention the pre-LLM method reads
        num_layers = self.cfg.text.num_hidden_layers
        for m in methods:
            if isinstance(m, PreLLMSelection):
                if self._pre is not None:
                    raise ValueError(f"two pre-LLM methods ({self._pre.name}, {m.name}); give at most one per stage")
                self._pre = m
                self._cls_layer = m.cls_probe(self.cfg)
            elif isinstance(m, _IN_LLM):
                if self._in_llm is not None or self._relevance is not None:
                    raise ValueError(f"two in-LLM methods ({m.name} and another); give at most one per stage")
                if isinstance(m, AllOrNothingGate):
                    self._relevance = m
                    self._rel_layer = m.resolve_layer(num_layers)
                else:
                    self._in_llm = m
            elif isinstance(m, DecodePruning):
                self._dyrate = m
            else:
                raise ValueError(f"method {m.name!r} (stage {m.stage}) is not supported by this generator")
        if self._dyrate is not None and (self._in_llm is not None or self._relevance is not None):
            raise ValueError("DyRate combines with a pre-LLM method only (in-LLM methods give layers different KV "
                             "cache layouts)")
        if self._dyrate is not None:
            self._predictor = self._dyrate.load_predictor()
            self._dy_layer = self._dyrate.resolve_layer(self._predictor)
            self._dy_weights = (jnp.asarray(self._predictor.weight), jnp.asarray(self._predictor.bias))
        self._validated: set[int] = set()  # visual-token counts the methods have been validated against
        n_v = getattr(self.cfg, "num_visual_tokens", None)
        if n_v is not None:
            self._validate(int(n_v))
        self.graphdef, self.state = nnx.split(model)
        opts = compiler_options(low_precision_weights(self.state))  # CPU bf16: no f32 copy of every weight
        static = ("max_new_tokens", "all_valid", "image_static", "buckets")
        self.prefill = jax.jit(self._prefill, static_argnames=static, compiler_options=opts)
        self.prefill_head = jax.jit(self._prefill_head, static_argnames=static, compiler_options=opts)
        self.prefill_tail = jax.jit(self._prefill_tail, static_argnames=("drop_all", "max_new_tokens", "num_visual"),
                                    compiler_options=opts)
        self.decode = jax.jit(self._decode, static_argnames=("max_new_tokens",), donate_argnames=("caches",),
                              compiler_options=opts)

    def _validate(self, n_v: int) -> None:
        """Validates every method against N_v = ``n_v`` visual tokens (in-LLM methods against what stage 1 keeps);
        remembered, so each count is checked once. Raises PruningError."""
        if n_v in self._validated:
            return
        num_layers = self.cfg.text.num_hidden_layers
        for m in self.methods:  # in-LLM methods see the visual tokens stage 1 kept
            m.validate(self._pre.keep if (self._pre is not None and isinstance(m, _IN_LLM)) else n_v, num_layers)
        if self._dyrate is not None:
            self._dyrate.validate(n_v, num_layers, self.cfg.text.num_attention_heads)
        self._validated.add(n_v)

    def row_plan(self, counts: np.ndarray) -> tuple[RowCounts, tuple]:
        """Per-row keep counts of a batch whose rows hold ``counts`` int [B] visual tokens (not all equal):
        (:class:`vtp_jax.generation.visual_spans.RowCounts` of int32 arrays, static buckets (pre-LLM keep bucket,
        in-LLM keep bucket), None where the stage is absent). Validates every method against every row. Raises
        PruningError."""
        num_layers = self.cfg.text.num_hidden_layers
        pre_keep, later_keep, reach = stage_keeps(self._pre, self._in_llm, counts, num_layers)
        dy_counts = None
        if self._relevance is not None:
            self._relevance.validate(int(reach.max()), num_layers)
        if self._dyrate is not None:
            self._dyrate.validate(int(reach.min()), num_layers, self.cfg.text.num_attention_heads)
            dy_counts = np.stack([dyrate_lib.keep_counts(int(n), self._predictor.num_rates) for n in reach])
        plan = RowCounts.of(counts, pre_keep, later_keep, dy_counts)
        return plan, (bucket(pre_keep), bucket(later_keep))

    # ---- jitted bodies -------------------------------------------------------------------------------------
    def _front(self, model, input_ids, attention_mask, images, image_static=(), rows=None, buckets=None):
        """Vision tower, merge and the pre-LLM stage → (SequenceState, visual_mask bool [B, T'], kept int32 [B, k],
        static visual count k). ``images`` / ``image_static``: see :func:`split_image_inputs`; N_v is the length of
        the image features (the prompt holds as many placeholders). ``rows`` / ``buckets``: a batch of different
        visual-token counts (:meth:`row_plan`), else None."""
        kwargs = _image_kwargs(images, image_static)
        if self._cls_layer is None:
            visual, cls_attn = model.image_features(**kwargs), None
        else:
            visual, cls_attn = model.image_features_with_cls(**kwargs, cls_layer=self._cls_layer)
        n_v = visual.shape[1]
        h, visual_mask = model.embed(input_ids, visual)
        key_valid = attention_mask.astype(bool)
        positions = model.positions(key_valid, visual_mask, **kwargs)  # [B, T] (1-D RoPE) or [B, T, 3] (M-RoPE)
        seq = SequenceState(h, positions, key_valid)
        kept = jnp.broadcast_to(jnp.arange(n_v, dtype=jnp.int32), (h.shape[0], n_v))
        pre = self._pre
        if pre is not None:  # pre-LLM: the decoder only ever sees the kept visual tokens
            pre = with_bucket(pre, None if buckets is None else buckets[0])
            if rows is None:
                kept = pre.select(visual, cls_attn)
            else:
                valid = jnp.arange(n_v)[None] < rows.counts[:, None]
                kept = pre.select(visual, cls_attn, valid=valid, row_keep=rows.pre_keep)
            seq, visual_mask = compact(seq, visual_mask, kept, n_v, reindex=pre.reindex)
            n_v = pre.keep
        return seq, visual_mask, kept, n_v

    def _prefill(self, state, input_ids, attention_mask, images, key, temperature, top_p, dy_weights=None, rows=None,
                 *, max_new_tokens, all_valid=False, image_static=(), buckets=None):
        model = nnx.merge(self.graphdef, state)
        seq, visual_mask, kept, n_v = self._front(model, input_ids, attention_mask, images, image_static, rows,
                                                  buckets)
        kept_pre = kept
        method = self._in_llm
        if method is not None:
            method = with_bucket(method, None if buckets is None else buckets[1])
        if method is None and self._dyrate is not None:
            b, t = seq.key_valid.shape
            last = jnp.full((b, 1), t - 1, jnp.int32)  # left padding: the last prompt token is at T − 1
            out = model.language_model(seq, DecoderPlan(cache_extra=max_new_tokens, probe=Probe(last, (self._dy_layer,)),
                                                        all_valid=all_valid))
        elif method is None:
            out = model.language_model(seq, DecoderPlan(cache_extra=max_new_tokens, all_valid=all_valid))
        else:

            def compact_fn(probe, s):
                scores = visual_scores(method.token_scores(probe, s.key_valid), visual_mask, n_v)
                if rows is None:
                    kept = select_topk(scores, method.keep)
                else:
                    kept = select_topk(scores, method.keep, visual_valid(s.key_valid, visual_mask, n_v),
                                       rows.later_keep)
                s, _ = compact(s, visual_mask, kept, n_v, reindex=method.reindex)
                return s, {"kept": kept}

            out = model.language_model(seq, DecoderPlan(
                cache_extra=max_new_tokens,
                probe=Probe(method.probe_rows(seq.key_valid), (method.layer - 1,)),
                compaction=Compaction(method.layer, compact_fn),
                all_valid=all_valid,
            ))
            kept = jnp.take_along_axis(kept, out.aux["kept"], axis=1)  # indices into the original visual tokens
        logits = model.logits(out.h[:, -1])
        key, sub = jax.random.split(key)
        token = sample_token(logits, sub, temperature, top_p)
        next_pos = next_position(out.state.positions)
        caches, dy = out.caches, None
        if self._dyrate is not None:
            caches, dy = self._dyrate_init(out, visual_mask, n_v, max_new_tokens, dy_weights, rows)
        return PrefillResult(token, caches, next_pos.astype(jnp.int32), kept, key, kept_pre, dy)

    # ---- DyRate ----------------------------------------------------------------------------------------------
    def _dyrate_update(self, dy, probs, caches, weights):
        """One DyRate decision from one query row's attention at the probe layer, probs float32 [B, H, S]:
        features → rate index (monotone) → keep count → drop the least-attended kept visual tokens from every
        layer's cache. ``dy``: :class:`vtp_jax.pruning.dyrate.DyRateState`. Returns (caches, dy)."""
        w, bias = weights
        feats = dyrate_lib.features(probs, dy.groups)
        k = dyrate_lib.choose_rate(feats @ w + bias, dy.rate, self._dyrate.monotone)
        target = jnp.take_along_axis(dy.counts, k[:, None], axis=1)[:, 0]
        scores = jnp.take_along_axis(probs.mean(axis=1), dy.slots, axis=1)  # [B, N_v]
        kept = dyrate_lib.drop_visual(scores, dy.kept, target)
        caches = [c._replace(valid=dyrate_lib.restrict_cache_valid(c.valid, dy.slots, kept)).laid_out() for c in caches]
        return caches, dy.replace(rate=k, kept=kept)

    def _dyrate_init(self, out, visual_mask, n_v, max_new_tokens, weights, rows=None):
        """DyRate's loop state from the prefill (the last prompt row at the probe layer decides the first rate):
        a :class:`vtp_jax.pruning.dyrate.DyRateState` (per-row keep counts from ``rows`` when the batch's rows hold
        different visual-token counts). Returns (caches, dy)."""
        b = visual_mask.shape[0]
        if rows is None:
            counts = jnp.broadcast_to(jnp.asarray(dyrate_lib.keep_counts(n_v, self._predictor.num_rates)),
                                      (b, self._predictor.num_rates))
        else:
            counts = rows.dyrate_counts
        dy = dyrate_lib.DyRateState(
            groups=dyrate_lib.slot_groups(out.state.key_valid, visual_mask, max_new_tokens),
            slots=visual_positions(visual_mask, n_v),
            kept=visual_valid(out.state.key_valid, visual_mask, n_v),
            rate=jnp.zeros((b,), jnp.int32),
            counts=counts,
        )
        probs = jnp.pad(out.probe_heads[:, :, 0], [(0, 0), (0, 0), (0, max_new_tokens)])  # over all cache slots
        return self._dyrate_update(dy, probs, out.caches, weights)

    def _prefill_head(self, state, input_ids, attention_mask, images, rows=None, *, max_new_tokens, all_valid=False,
                      image_static=(), buckets=None):
        """ToDRE stage 2, part 1: front + layers < ℓ + layer ℓ's attention rows (all T rows, float32).

        Returns (SequenceState at layer ℓ's input, visual_mask bool [B, T'], kept int32 [B, k], caches of layers
        < ℓ, α_t→v float32 [B], α_v→t float32 [B]).
        """
        model = nnx.merge(self.graphdef, state)
        seq, visual_mask, kept, _ = self._front(model, input_ids, attention_mask, images, image_static, rows, buckets)
        lm, ell = model.language_model, self._rel_layer
        out = lm(seq, DecoderPlan(cache_extra=max_new_tokens, layer_range=(0, ell), all_valid=all_valid))
        b, t = seq.key_valid.shape
        rows = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        probs = lm.attention_probe(ell, out.state, rows)
        a_tv, a_vt = relevance_ratios(probs, out.state.key_valid, visual_mask)
        return out.state, visual_mask, kept, out.caches, a_tv, a_vt

    def _prefill_tail(self, state, seq, visual_mask, drop, key, temperature, top_p, *, drop_all, max_new_tokens,
                      num_visual):
        """ToDRE stage 2, part 2: layers ≥ ℓ and the first token.

        drop bool [B] (the host's decision). ``drop_all`` (static): compact every visual token away (length
        T' − k); else keep the full length and mask the visual keys of the rows where ``drop``. ``num_visual``
        (static): k, the visual tokens in ``seq`` (stage 1's keep, else N_v).
        Returns (token int32 [B], caches of layers ≥ ℓ, next_pos int32 [B], key).
        """
        model = nnx.merge(self.graphdef, state)
        n_v = num_visual
        if drop_all:
            none = jnp.zeros((seq.h.shape[0], 0), jnp.int32)
            seq, _ = compact(seq, visual_mask, none, n_v)
        else:
            seq = seq._replace(key_valid=seq.key_valid & ~(visual_mask & drop[:, None]))
        lm = model.language_model
        out = lm(seq, DecoderPlan(cache_extra=max_new_tokens, layer_range=(self._rel_layer, len(lm.layers))))
        logits = model.logits(out.h[:, -1])
        key, sub = jax.random.split(key)
        token = sample_token(logits, sub, temperature, top_p)
        next_pos = next_position(out.state.positions)
        return token, out.caches, next_pos.astype(jnp.int32), key

    def _decode(self, state, caches, token, next_pos, key, temperature, top_p, eos_ids, pad_id, dy=None,
                dy_weights=None, *, max_new_tokens) -> DecodeResult:
        """The decode loop → :class:`DecodeResult`. With DyRate, ``dy`` (the prefill's
        :class:`vtp_jax.pruning.dyrate.DyRateState`) is carried through the loop and the result's ``kept_per_token``
        / ``rate_per_token`` log it per generated token."""
        b = token.shape[0]
        out = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(token)
        done = jnp.isin(token, eos_ids)
        probe_layer = self._dy_layer if dy is not None else None
        kept_log = rate_log = None
        if dy is not None:
            kept_log = jnp.zeros((b, max_new_tokens), jnp.int32).at[:, 0].set(dy.counts[:, 0])  # rate 0: N_v[b]
            rate_log = jnp.zeros((b, max_new_tokens), jnp.int32).at[:, 0].set(dy.rate)

        def cond(c: _DecodeCarry):
            return (c.i < max_new_tokens) & ~jnp.all(c.done)

        def body(c: _DecodeCarry) -> _DecodeCarry:
            i, dy, kept_log, rate_log = c.i, c.dy, c.kept_log, c.rate_log
            model = nnx.merge(self.graphdef, loop_invariant_weights(state, i))  # converts stay in the loop
            h = model.language_model.embed_tokens(c.tok)[:, None, :]
            if dy is not None:
                kept_log = kept_log.at[:, i].set(jnp.sum(dy.kept, axis=1, dtype=jnp.int32))
            h, caches, probs = model.language_model.decode_step(h, c.pos[:, None], c.caches, probe_layer=probe_layer)
            if dy is not None:
                caches, dy = self._dyrate_update(dy, probs, caches, dy_weights)
                rate_log = rate_log.at[:, i].set(dy.rate)
            key, sub = jax.random.split(c.key)
            nxt = sample_token(model.logits(h[:, 0]), sub, temperature, top_p)
            nxt = jnp.where(c.done, pad_id, nxt)
            return _DecodeCarry(i + 1, nxt, c.pos + 1, caches, key, c.done | jnp.isin(nxt, eos_ids),
                                c.out.at[:, i].set(nxt), dy, kept_log, rate_log)

        carry = _DecodeCarry(jnp.int32(1), token, next_pos, caches, key, done, out, dy, kept_log, rate_log)
        c = jax.lax.while_loop(cond, body, carry)
        return DecodeResult(c.out, c.caches, c.kept_log, c.rate_log)

    # ---- host API ------------------------------------------------------------------------------------------
    @within_mesh
    def generate_arrays(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        image_inputs,
        *,
        max_new_tokens: int,
        eos_token_ids: tuple[int, ...] = (),
        pad_token_id: int = 0,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> GenerationOutput:
        """Generates up to ``max_new_tokens`` tokens for left-padded prompts.

        input_ids int [B, T] (T a bucket length), attention_mask {0,1} [B, T]; image_inputs: LLaVA's pixel_values
        float32 [B, 3, H, W] as a bare array, or the dict of ``model.image_features`` keyword arguments (arrays
        traced, other values static: :func:`split_image_inputs`; a :class:`vtp_jax.processing.Batch`'s
        ``image_inputs``). N_v is the number of image placeholders per row of ``input_ids``; rows may differ (their
        visual spans are padded, :mod:`vtp_jax.generation.visual_spans`).
        Returns tokens int [B, max_new_tokens] (EOS included, pad after), kept indices (int [B, keep]; with rows of
        different N_v each row's own ``k_b`` ascending, then −1) and timings (seconds).
        Raises SamplerError (a ValueError) before any work for a temperature that is negative or not finite, a
        top_p outside (0, 1], a seed outside [0, 2³² − 1] or max_new_tokens < 1
        (:func:`vtp_jax.generation.sampling.check_sampler_settings`); ValueError when a row's placeholders are not one
        contiguous run; PruningError when a method does not fit a row's N_v.
        """
        check_sampler_settings(temperature=temperature, top_p=top_p, seed=seed, max_new_tokens=max_new_tokens)
        input_ids, attention_mask, n_visual = pad_visual_spans(input_ids, attention_mask, self.cfg.image_token_id)
        n_v = int(n_visual.max()) if n_visual.size else 0
        rows, buckets = None, None
        if n_visual.size and not np.all(n_visual == n_v):
            rows, buckets = self.row_plan(n_visual)
        else:
            self._validate(n_v)
        images, image_static = split_image_inputs(image_inputs)
        key = jax.random.key(seed)
        temp, top_p_ = jnp.float32(temperature), jnp.float32(top_p)
        args = (jnp.asarray(input_ids, jnp.int32), jnp.asarray(attention_mask, bool), images)
        if self.mesh is not None:  # the batch along the mesh's data axis; weights are already sharded
            args = jax.tree.map(lambda x: shard_batch(x, self.mesh), args)
        image_kw = {}  # LLaVA's calls (no static image arguments, uniform rows) stay as they were
        if image_static:  # static image arguments (LLaVA-NeXT's image size and grid)
            image_kw["image_static"] = image_static
        if rows is not None:
            image_kw.update(rows=rows, buckets=buckets)
        stages: dict = {}
        dropped = None
        mask_kw = mask_free_kwargs(attention_mask)  # GPU, no padding: cuDNN attention in prefill
        t0 = time.perf_counter()
        dy_weights = self._dy_weights if self._dyrate is not None else None
        dy = None
        if self._relevance is None:
            dy_args = {"dy_weights": dy_weights} if dy_weights is not None else {}  # same signature as before DyRate
            pre = self.prefill(self.state, *args, key, temp, top_p_, max_new_tokens=max_new_tokens,
                               **mask_kw, **dy_args, **image_kw)
            dy = pre.dyrate
            token, caches, next_pos, key, kept = pre.token, pre.caches, pre.next_pos, pre.key, pre.kept
            kept_pre = pre.kept_pre
            jax.block_until_ready(token)
        else:
            seq, vmask, kept, head_caches, a_tv, a_vt = self.prefill_head(self.state, *args, max_new_tokens=max_new_tokens,
                                                                          **mask_kw, **image_kw)
            # host sync: the decision picks the compiled shape; every process sees the same global ratios
            a_tv, a_vt = to_host(a_tv), to_host(a_vt)
            dropped = self._relevance.fires(a_tv, a_vt)
            token, tail_caches, next_pos, key = self.prefill_tail(
                self.state, seq, vmask, jnp.asarray(dropped), key, temp, top_p_,
                drop_all=bool(dropped.all()), max_new_tokens=max_new_tokens,
                num_visual=int(kept.shape[1]),
            )
            caches = list(head_caches) + list(tail_caches)
            kept_pre = kept
            jax.block_until_ready(token)
            stages[self._relevance.name] = {
                "dropped": dropped, "alpha_t2v": a_tv, "alpha_v2t": a_vt,
                "layer": self._rel_layer, "tau": self._relevance.tau,
            }
        t1 = time.perf_counter()
        kept, kept_pre = to_host(kept), to_host(kept_pre)
        kept = unpad_kept(kept, n_visual) if rows is not None else kept
        for m in self.methods:
            if isinstance(m, PreLLMSelection):
                stages[m.name] = unpad_kept(kept_pre, n_visual) if rows is not None else kept_pre
            elif m is self._in_llm:
                stages[m.name] = kept
        eos = jnp.asarray(list(eos_token_ids) or [-1], jnp.int32)
        dy_args = {"dy": dy, "dy_weights": dy_weights} if dy is not None else {}
        result = self.decode(
            self.state, caches, token, next_pos, key, temp, top_p_, eos, jnp.int32(pad_token_id),
            max_new_tokens=max_new_tokens, **dy_args,
        )
        tokens = to_host(jax.block_until_ready(result.tokens))
        t2 = time.perf_counter()
        counts = [count_new_tokens(row, eos_token_ids) for row in tokens]
        out = GenerationOutput(tokens=tokens, kept=kept, num_new_tokens=counts, kind=AUTOREGRESSIVE,
                               decode_s=t2 - t1, prefill_s=t1 - t0, stages=stages, stage2_dropped=dropped)
        if dy is not None:
            out.kept_per_token = np.array(to_host(result.kept_per_token))
            out.rate_per_token = np.array(to_host(result.rate_per_token))
            for b, n in enumerate(counts):  # rows that stopped early: nothing was generated after token n − 1
                out.kept_per_token[b, n:] = 0
                out.rate_per_token[b, n:] = 0
            stages[self._dyrate.name] = {"kept_per_token": out.kept_per_token, "rate_per_token": out.rate_per_token,
                                         "rates": dyrate_lib.rates(self._predictor.num_rates).tolist(),
                                         "layer": self._dy_layer}
        return out

    def generate(self, batch, settings) -> GenerationOutput:
        """The shared interface: ``batch`` (``input_ids``, ``attention_mask``, ``image_inputs`` — passed through
        whole; a :class:`vtp_jax.processing.Batch`) and :class:`vtp_jax.generation.SamplerSettings` →
        :meth:`generate_arrays`."""
        return self.generate_arrays(batch.input_ids, batch.attention_mask, batch.image_inputs,
                             max_new_tokens=settings.max_new_tokens, eos_token_ids=tuple(settings.eos_token_ids),
                             pad_token_id=settings.pad_token_id, temperature=settings.temperature,
                             top_p=settings.top_p, seed=settings.seed)

    def compiled_counts(self) -> dict[str, Any]:
        """Number of compiled variants of each jitted function (for static-shape tests)."""
        counts = {"prefill": self.prefill._cache_size(), "decode": self.decode._cache_size()}
        if self._relevance is not None:
            counts.update(prefill_head=self.prefill_head._cache_size(), prefill_tail=self.prefill_tail._cache_size())
        return counts
