"""Masked-diffusion generation (LLaDA's ``generate``), jitted, with pre-LLM pruning (ToDRE stage 1, DivPrune, random)
or during-generation pruning (RedVTP).

The sequence is ``[prompt (left-padded to a bucket), MASK × gen_length]``. ``gen_length`` is split into blocks of
``block_length``; each block gets ``steps / num_blocks`` denoising steps. At every step the whole sequence runs
through the bidirectional decoder; masked positions of the current block are filled by the ``k`` most confident
predictions (``low_confidence``) or ``k`` random ones (``random``), ``k`` from :func:`num_transfer_tokens`.

Source: LLaDA ``generate.py`` (ML-GSAI/LLaDA) — ``get_num_transfer_tokens``, ``add_gumbel_noise``, classifier-free
guidance ``un + (cfg + 1)(cond − un)``; LLaDA's ``generate.py`` (ML-GSAI/LLaDA) and LLaDA-V's ``generate_with_embeds``. Differences, all documented:
  - Gumbel-max is done in log space, ``argmax(logits / T + g)`` with ``g = −log(−log u)``, float32. The reference
    computes ``exp(logits) / (−log u)^T`` in float64; both pick the same token (argmax of a monotone transform)
    except at float32 ties.
  - Selection of the ``k`` positions uses a stable rank (ties → lower position), like ``torch.topk`` on distinct
    values.

Shapes are static: the steps of all blocks run in one ``lax.while_loop`` (it ends early under the official stop rule
or when nothing is masked). With RedVTP the scoring step (step 0 unless ``score_step``) runs at full length in its
own jitted function and compacts the prompt (and, under approximate caching, the cache); the later steps run in the
loop on the compacted sequence. A pre-LLM method
runs in ``encode``: it picks ``keep`` visual tokens from the projector outputs and the prompt is compacted there
(``P − N_v + keep`` tokens), so every denoising step of every block sees the shorter prompt; kept tokens keep their
original positions unless the method's ``reindex`` (the response then starts right after the last kept position).

Rows of one batch may hold different numbers of visual tokens (images of different anyres layouts, ``image_size``
/ ``grid`` given per row): their visual spans are padded to the largest and each method keeps its own count per row
inside a static keep bucket (:mod:`vtp_jax.generation.visual_spans`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vtp_jax.sharding import shard_batch, to_host, within_mesh
from vtp_jax.families.base import MASKED_DIFFUSION
from vtp_jax.generation.output import GenerationOutput, count_new_tokens
from vtp_jax.generation.sampling import check_sampler_settings
from vtp_jax.modeling.decoder import DecoderPlan, Probe, SequenceState
from vtp_jax.modeling.attention import LayerCache, mask_free_kwargs
from vtp_jax.modeling.axes import BATCH, SEQUENCE, constrain
from vtp_jax.modeling.rope import apply_rope
from vtp_jax.modeling.layers import compiler_options, loop_invariant_weights, low_precision_weights
from vtp_jax.generation.visual_spans import (
    RowCounts, bucket, pad_visual_spans, stage_keeps, static_value, unpad_kept, with_bucket,
)
from vtp_jax.pruning.core import compact, compaction_order, select_topk, visual_scores, visual_valid
from vtp_jax.pruning.stages import AfterFirstStep, PreLLMSelection


CACHE_MODES = ("none", "prefix", "dual")
PRUNED_CACHE_MODES = ("compact", "rebuild")


class DiffusionError(ValueError):
    """Invalid sampler settings (lengths that do not divide, missing mask id…)."""


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    """Sampler settings (static under jit).

    gen_length: response tokens; block_length: tokens per block (divides gen_length); steps: total denoising
    steps (divisible by the number of blocks); remasking: "low_confidence" | "random"; cfg: guidance scale
    (0 = off); mask_id: the [MASK] token id; suppress_ids: token ids never predicted at masked positions
    (LLaDA-V forbids 126081, 126080, 126346, 126347); stop_ids: EOS / EOT ids where the answer is cut.
    early_stop: with ``stop_ids``, the official stopping rule of LLaDA-V's ``generate_with_embeds`` (ML-GSAI/LLaDA-V,
    ``train/llava/model/language_model/llada/modeling_llada.py``, called with ``stopping_criteria=[conv.sep]`` by
    its demo and lmms-eval model): once a stop id is unmasked at position s, no position ≥ s is unmasked again
    (``x0_p[:, stop_position:] = -inf``), and a row is finished as soon as nothing before s is still masked (the
    official loop leaves the block and skips the remaining blocks), so the loop runs fewer steps. False: LLaDA's
    plain ``generate`` (every slot filled; the answer cut at the first stop id afterwards).
    cache: approximate KV caching (Fast-dLLM, arXiv 2505.22618 §3.2; NVlabs/Fast-dLLM ``generate_with_prefix_cache``
    / ``generate_with_dual_cache``). "none": every step runs the whole sequence. "prefix": the first step of each
    block runs the whole sequence and keeps every layer's keys / values; the block's later steps run the response
    rows only and attend to the cached keys of everything before the block (the prompt and the earlier blocks)
    and to fresh keys from the block on. (Fast-dLLM runs only the block and what follows it; here the whole
    response is computed — one static shape for every block — and the rows before the block are attended to from
    the cache, as there.) "dual": the later steps run the block's rows only, attending to cached keys before *and*
    after the block. Not with classifier-free guidance (``cfg > 0``).
    threshold: parallel decoding (Fast-dLLM §3.3, its ``get_transfer_index(..., threshold)``): None — LLaDA's
    schedule, ``steps / num_blocks`` steps per block unmasking a fixed count each; τ in (0, 1] — every step unmasks
    the current block's most confident masked position and every other one whose confidence is ≥ τ, and a block
    runs until it is complete (the batch moves on when every row's block is), so the number of steps depends on
    the data (at most ``gen_length``; ``steps`` is then unused). Reported as ``GenerationOutput.steps``.
    pruned_cache: with a cache mode and a during-generation method (RedVTP, LLaDA-FastV), what happens to the cache
    when the scoring step prunes visual tokens. "compact": the pruned tokens leave the cache (every layer's keys /
    values gathered, the keys re-rotated to their new positions), so the next step already runs on the cache of
    the shorter sequence — those keys were computed with every visual token present, one more approximation of
    the same kind as Fast-dLLM's. "rebuild": the next step runs the compacted sequence at full length and caches
    it anew (one full pass more per generation). No public code combines the two methods; "compact" is the
    default here (measured in the README).
    """

    gen_length: int = 32
    block_length: int = 32
    steps: int = 16
    remasking: str = "low_confidence"
    cfg: float = 0.0
    mask_id: int = 126336
    suppress_ids: tuple[int, ...] = ()
    stop_ids: tuple[int, ...] = ()
    early_stop: bool = True
    cache: str = "none"
    threshold: float | None = None
    pruned_cache: str = "compact"

    def validate(self) -> None:
        """Raises DiffusionError with the offending values (lengths and steps whole numbers ≥ 1 that divide, a
        known remasking, a finite cfg ≥ 0)."""
        for name in ("gen_length", "block_length", "steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise DiffusionError(f"{name} must be a whole number, got {value!r}")
        if self.gen_length < 1 or self.block_length < 1 or self.steps < 1:
            raise DiffusionError(
                f"gen_length, block_length and steps must be ≥ 1, got {self.gen_length}, {self.block_length}, "
                f"{self.steps}"
            )
        if isinstance(self.cfg, bool) or not isinstance(self.cfg, numbers.Real):
            raise DiffusionError(f"cfg must be a number, got {self.cfg!r}")
        if self.gen_length % self.block_length:
            raise DiffusionError(
                f"gen_length ({self.gen_length}) must be divisible by block_length ({self.block_length})"
            )
        if self.steps % self.num_blocks:
            raise DiffusionError(f"steps ({self.steps}) must be divisible by the number of blocks ({self.num_blocks})")
        if self.remasking not in ("low_confidence", "random"):
            raise DiffusionError(f"remasking must be 'low_confidence' or 'random', got {self.remasking!r}")
        if not math.isfinite(self.cfg) or self.cfg < 0:
            raise DiffusionError(f"cfg must be a finite number ≥ 0, got {self.cfg}")
        if self.threshold is not None and (isinstance(self.threshold, bool)
                                           or not isinstance(self.threshold, numbers.Real)
                                           or not 0.0 < float(self.threshold) <= 1.0):
            raise DiffusionError(f"threshold must be a number in (0, 1], got {self.threshold!r}")
        if self.cache not in CACHE_MODES:
            raise DiffusionError(f"cache must be one of {', '.join(CACHE_MODES)}, got {self.cache!r}")
        if self.pruned_cache not in PRUNED_CACHE_MODES:
            raise DiffusionError(f"pruned_cache must be one of {', '.join(PRUNED_CACHE_MODES)}, got "
                                 f"{self.pruned_cache!r}")
        if self.cache != "none" and self.cfg > 0:
            raise DiffusionError(f"cache {self.cache!r} does not combine with classifier-free guidance (cfg "
                                 f"{self.cfg}); use --cache none")

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks

    @property
    def max_steps(self) -> int:
        """The most denoising steps a generation runs: ``steps`` on LLaDA's schedule, ``gen_length`` with parallel
        decoding (at least one token per step)."""
        return self.gen_length if self.threshold is not None else self.steps


def num_transfer_tokens(masked_count: jax.Array, steps: int) -> jax.Array:
    """Tokens to unmask at each of ``steps`` steps: ``m // steps`` plus one for the first ``m % steps`` steps.

    masked_count int [B] → int32 [B, steps] (LLaDA ``get_num_transfer_tokens``).
    """
    base = masked_count[:, None] // steps
    rem = masked_count[:, None] % steps
    return (base + (jnp.arange(steps)[None, :] < rem)).astype(jnp.int32)


def gumbel_argmax(logits: jax.Array, uniform: jax.Array, temperature: float) -> jax.Array:
    """Token choice: argmax of logits (T = 0) or of ``logits/T − log(−log u)``; logits/uniform [B, G, V]."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    g = -jnp.log(-jnp.log(uniform))
    return jnp.argmax(logits / temperature + g, axis=-1).astype(jnp.int32)


def first_stop(x_gen: jax.Array, cfg: DiffusionConfig) -> jax.Array:
    """Position of each row's first unmasked stop id, int32 [B] (G = ``x_gen.shape[1]`` without one, or when the
    stop rule is off: ``cfg.early_stop`` False or no ``cfg.stop_ids``)."""
    b, g = x_gen.shape
    if not (cfg.early_stop and cfg.stop_ids):
        return jnp.full((b,), g, jnp.int32)
    hit = jnp.isin(x_gen, jnp.asarray(cfg.stop_ids, jnp.int32))
    return jnp.min(jnp.where(hit, jnp.arange(g, dtype=jnp.int32)[None], g), axis=1).astype(jnp.int32)


def rows_done(x_gen: jax.Array, stop: jax.Array, cfg: DiffusionConfig) -> jax.Array:
    """bool [B]: rows that have unmasked a stop id and hold no masked position before it (the official loop's
    "no pre-stop masks left": the row is finished)."""
    g = x_gen.shape[1]
    before = jnp.arange(g)[None] < stop[:, None]
    return (stop < g) & ~jnp.any((x_gen == cfg.mask_id) & before, axis=1)


def current_block(x_gen: jax.Array, stop: jax.Array, cfg: DiffusionConfig) -> jax.Array:
    """Parallel decoding: the block the batch works on, int32 []: the first block holding a masked position
    before some row's stop (``cfg.num_blocks`` when none is left)."""
    g = x_gen.shape[1]
    idx = jnp.arange(g)[None]
    left = (x_gen == cfg.mask_id) & (idx < stop[:, None])
    blocks = jnp.where(left, idx // cfg.block_length, cfg.num_blocks)
    return jnp.min(blocks).astype(jnp.int32)


def unmask_step(
    x_gen: jax.Array, logits: jax.Array, step: jax.Array, n_transfer: jax.Array, key: jax.Array,
    cfg: DiffusionConfig, temperature: float, stop: jax.Array | None = None, block: jax.Array | None = None,
) -> jax.Array:
    """One LLaDA update of the response tokens.

    x_gen int32 [B, G] (mask_id where masked); logits float32 [B, G, V] (response positions only); step: global
    step index (selects the block); n_transfer int32 [B]: how many to unmask now; stop int32 [B] or None: each
    row's first stop position (:func:`first_stop`): positions ≥ it are never unmasked (the official stop rule;
    where fewer positions than ``n_transfer`` remain before it, fewer are unmasked — the official loop's
    ``topk`` would then also fill masked slots after the stop, which are cut from the answer). ``block`` (int32
    [], parallel decoding with ``cfg.threshold``): the current block, instead of ``step``'s; ``n_transfer`` is
    then unused — the most confident eligible position and every one with confidence ≥ τ are unmasked. Returns
    the new x_gen.
    """
    b, g = x_gen.shape
    k_noise, k_conf = jax.random.split(key)
    if cfg.suppress_ids:
        logits = logits.at[:, :, jnp.asarray(cfg.suppress_ids)].set(-jnp.inf)
    uniform = jax.random.uniform(k_noise, logits.shape, jnp.float32, minval=jnp.finfo(jnp.float32).tiny, maxval=1.0)
    x0 = gumbel_argmax(logits, uniform, temperature)
    if cfg.remasking == "low_confidence":
        p = jax.nn.softmax(logits, axis=-1)
        conf = jnp.take_along_axis(p, x0[:, :, None], axis=-1)[:, :, 0]
    else:
        conf = jax.random.uniform(k_conf, (b, g), jnp.float32)
    block_end = ((step // cfg.steps_per_block if block is None else block) + 1) * cfg.block_length
    masked = x_gen == cfg.mask_id
    eligible = masked & (jnp.arange(g)[None, :] < block_end)
    if stop is not None:
        eligible = eligible & (jnp.arange(g)[None, :] < stop[:, None])
    conf = jnp.where(eligible, conf, -jnp.inf)
    order = jnp.argsort(-conf, axis=1, stable=True)
    rank = jnp.zeros_like(order).at[jnp.arange(b)[:, None], order].set(jnp.arange(g)[None, :])
    if cfg.threshold is None:
        transfer = (rank < n_transfer[:, None]) & eligible
    else:
        transfer = ((rank == 0) | (conf >= cfg.threshold)) & eligible
    return jnp.where(transfer, x0, x_gen)


class _Prompt(NamedTuple):
    """The fixed part of the sequence: prompt embeddings (cond, and uncond for CFG), positions, validity."""

    h: jax.Array  # [B, P, D]
    h_uncond: jax.Array  # [B, P, D] (all MASK embeddings) — unused when cfg == 0
    positions: jax.Array  # int32 [B, P]
    key_valid: jax.Array  # bool [B, P]
    visual_mask: jax.Array  # bool [B, P]
    kept: jax.Array | None = None  # int32 [B, keep]: visual tokens left by pruning so far (None: all of them)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _DenoiseCarry:
    """The denoising loop's state between steps: step int32 [] (global index of the next step), x_gen int32 [B, G]
    (response tokens, MASK where still masked), counts int32 [B, steps_per_block] (tokens to unmask per step of the
    current block), key (PRNG key), stop int32 [B] (first stop position, G without one: :func:`first_stop`),
    caches (one :class:`LayerCache` per layer from the last full-length step under approximate caching, else
    None), block int32 [] (parallel decoding: the block of the previous step)."""

    step: jax.Array
    x_gen: jax.Array
    counts: jax.Array
    key: jax.Array
    stop: jax.Array
    caches: list | None
    block: jax.Array


class DiffusionGenerator:
    """Jitted masked-diffusion sampling for a bidirectional VLM (LLaDA-V).

    Args:
      model: NNX model with ``image_features(**image_inputs)``, ``embed(ids, visual)``, ``language_model``
        (a :class:`vtp_jax.modeling.decoder.Decoder` with ``causal=False``) and ``logits(h)``.
      cfg: sampler settings.
      method: None, a pre-LLM method (stage "pre_llm", applied in ``encode``; e.g. ToDRE, DivPrune, random), a
        during-generation method scored at the first denoising step (RedVTP, LLaDA-FastV), or a tuple of one of
        each (e.g. ``todre+redvtp``: the during-generation method prunes what the pre-LLM one kept). Raises
        DiffusionError for another stage or two methods of one stage, PruningError for bad options.

    Three jitted functions, each compiled once per shape: ``encode`` (vision tower, projector, merge),
    ``first_step`` (a step at full length: step 0, and a during-generation method's scoring step with its
    compaction) and ``denoise`` (the other steps of every block in one ``while_loop``, up to a traced bound).
    """

    def __init__(self, model, cfg: DiffusionConfig, method=None, *, mesh=None):
        cfg.validate()
        self.mesh = mesh  # a jax.sharding.Mesh: inputs are split along its data axis (vtp_jax.sharding)
        if model.cfg.text.causal:
            raise DiffusionError("diffusion sampling needs a bidirectional decoder (text config causal=False)")
        methods = tuple(method) if isinstance(method, (tuple, list)) else (() if method is None else (method,))
        stages = [m.stage for m in methods]
        if any(st not in ("pre_llm", "during_generation") for st in stages) or len(set(stages)) != len(stages):
            raise DiffusionError(f"methods {[m.name for m in methods]} (stages {stages}): the diffusion sampler runs "
                                 "at most one pre_llm and one during_generation method")
        self.cfg, self.method, self.methods = cfg, method, methods
        # The stages run in order on the prompt (its visual mask and kept indices), so chaining a pre-LLM and a
        # during-generation method needs only this constructor to accept both.
        self._pre = next((m for m in methods if isinstance(m, PreLLMSelection)), None)
        self._during = next((m for m in methods if isinstance(m, AfterFirstStep)), None)
        if self._during is not None:
            limit = cfg.max_steps
            if not 0 <= self._during.score_step < limit:
                what = "the most steps a threshold run takes (gen_length)" if cfg.threshold is not None else "steps"
                raise DiffusionError(f"{self._during.name}: score_step {self._during.score_step} must be below "
                                     f"{limit}, {what}")
        self._cls_layer = None if self._pre is None else self._pre.cls_probe(model.cfg)
        self.num_layers = model.cfg.text.num_hidden_layers
        self.image_token_id = model.cfg.image_token_id
        self.graphdef, self.state = nnx.split(model)
        opts = compiler_options(low_precision_weights(self.state))  # CPU bf16: no f32 copy of every weight
        self.encode = jax.jit(self._encode, static_argnames=("static", "pre_bucket"), compiler_options=opts)
        self.first_step = jax.jit(self._full_step, static_argnames=("temperature", "num_visual", "all_valid",
                                                                    "later_bucket", "score"), compiler_options=opts)
        self.denoise = jax.jit(self._denoise, static_argnames=("temperature", "all_valid", "refresh_first"),
                               compiler_options=opts)

    # ---- jitted bodies -------------------------------------------------------------------------------------
    def _encode(self, state, input_ids, attention_mask, arrays, rows=None, *, static, pre_bucket=None):
        """Vision tower, projector, merge, and the pre-LLM stage if any (selection + compaction of the prompt).
        ``rows`` / ``pre_bucket``: a batch of different visual-token counts (:meth:`row_plan`), else None."""
        model = nnx.merge(self.graphdef, state)
        if self._cls_layer is None:
            visual, cls_attn = model.image_features(**arrays, **dict(static)), None
        else:
            visual, cls_attn = model.image_features_with_cls(**arrays, **dict(static), cls_layer=self._cls_layer)
        h, visual_mask = model.embed(input_ids, visual)
        key_valid = attention_mask.astype(bool)
        positions = jnp.maximum(jnp.cumsum(key_valid, axis=1) - 1, 0).astype(jnp.int32)
        mask_emb = model.language_model.embed_tokens(jnp.int32(self.cfg.mask_id)).astype(h.dtype)
        pre, kept = self._pre, None
        if pre is not None:
            if rows is None:
                kept = pre.select(visual, cls_attn)
            else:
                pre = with_bucket(pre, pre_bucket)
                valid = jnp.arange(visual.shape[1])[None] < rows.counts[:, None]
                kept = pre.select(visual, cls_attn, valid=valid, row_keep=rows.pre_keep)
            seq, visual_mask = compact(SequenceState(h, positions, key_valid), visual_mask, kept, visual.shape[1],
                                       reindex=pre.reindex)
            h, positions, key_valid = seq
        return _Prompt(h, jnp.broadcast_to(mask_emb, h.shape), positions, key_valid, visual_mask, kept)

    @staticmethod
    def _response_positions(prompt: _Prompt, g: int) -> jax.Array:
        """int32 [B, G]: the response follows the prompt's last position."""
        return (jnp.max(prompt.positions, axis=1, keepdims=True) + 1 + jnp.arange(g)[None, :]).astype(jnp.int32)

    def _forward(self, model, prompt: _Prompt, x_gen, *, probe: Probe | None = None, all_valid=False,
                 caches: bool = False):
        """Logits of the response positions float32 [B, G, V], and the decoder's probe float32 [B, R, T] (or None
        without ``probe``: rows int [B, R] of the conditional batch, tiled for the unconditional one). With
        ``caches``, a third value: every layer's :class:`LayerCache` of the whole sequence (approximate caching)."""
        cfg = self.cfg
        b, g = x_gen.shape
        gen_emb = model.language_model.embed_tokens(x_gen).astype(prompt.h.dtype)
        gen_pos = self._response_positions(prompt, g)
        positions = jnp.concatenate([prompt.positions, gen_pos], axis=1)
        key_valid = jnp.concatenate([prompt.key_valid, jnp.ones((b, g), bool)], axis=1)
        h = jnp.concatenate([prompt.h, gen_emb], axis=1)
        if cfg.cfg > 0:  # unconditional pass: the prompt replaced by MASK, batched with the conditional one
            h = jnp.concatenate([h, jnp.concatenate([prompt.h_uncond, gen_emb], axis=1)], axis=0)
            positions, key_valid = jnp.tile(positions, (2, 1)), jnp.tile(key_valid, (2, 1))
            if probe is not None:
                probe = Probe(jnp.tile(probe.rows, (2, 1)), probe.layers)
        plan = DecoderPlan(probe=probe, all_valid=all_valid, cache_extra=0 if caches else None)
        out = model.language_model(SequenceState(h, positions, key_valid), plan)
        logits = model.logits(out.h[:, -g:])
        probe = None if out.probe is None else out.probe[:b]
        if cfg.cfg > 0:
            cond, un = logits[:b], logits[b:]
            logits = un + (cfg.cfg + 1.0) * (cond - un)
        if caches:
            return logits, probe, out.caches
        return logits, probe

    def _window_logits(self, model, prompt: _Prompt, x_gen, caches, block_start):
        """A later step of a block under approximate caching: logits float32 [B, G, V] of the response (dual
        cache: the block's rows computed, the others zero — never read, only the block is unmasked).
        ``block_start``: int32 scalar, the block's first response slot."""
        cfg = self.cfg
        b, g = x_gen.shape
        p = prompt.h.shape[1]
        positions = self._response_positions(prompt, g)
        lm = model.language_model
        if cfg.cache == "prefix":  # every response row; cached keys before the block
            h = lm.embed_tokens(x_gen).astype(prompt.h.dtype)
            out = lm.window_step(h, positions, caches, jnp.int32(p), p + block_start)
            return model.logits(out)
        ids = jax.lax.dynamic_slice(x_gen, (0, block_start), (b, cfg.block_length))
        pos = jax.lax.dynamic_slice(positions, (0, block_start), (b, cfg.block_length))
        h = lm.embed_tokens(ids).astype(prompt.h.dtype)
        out = lm.window_step(h, pos, caches, p + block_start, p + block_start)
        logits = model.logits(out)
        return jax.lax.dynamic_update_slice(jnp.zeros((b, g, logits.shape[-1]), logits.dtype), logits,
                                            (0, block_start, 0))

    def _block_counts(self, x_gen, step):
        """Tokens to unmask per step of the block that ``step`` opens: int32 [B, steps_per_block]."""
        cfg = self.cfg
        in_block = (jnp.arange(cfg.gen_length) // cfg.block_length) == step // cfg.steps_per_block
        masked = jnp.sum((x_gen == cfg.mask_id) & in_block[None, :], axis=1)
        return num_transfer_tokens(masked, cfg.steps_per_block)

    def _schedule(self, c: _DenoiseCarry):
        """The step's place in the schedule: (block int32 [] or None, opens bool [], counts int32 [B, S], j).
        Parallel decoding: the current block (:func:`current_block`), which opens when it differs from the previous
        step's. LLaDA's schedule: the block of ``c.step``; at its first step (j = 0) the per-step counts of the
        block are computed."""
        cfg = self.cfg
        j = c.step % cfg.steps_per_block
        if cfg.threshold is not None:
            block = current_block(c.x_gen, c.stop, cfg)
            return block, block != c.block, c.counts, j
        return None, j == 0, jnp.where(j == 0, self._block_counts(c.x_gen, c.step), c.counts), j

    def _advance(self, c: _DenoiseCarry, logits, block, counts, j, caches, *, temperature) -> _DenoiseCarry:
        """Unmasks with the step's logits float32 [B, G, V] and moves the carry to the next step."""
        key, sub = jax.random.split(c.key)
        x_gen = constrain(unmask_step(c.x_gen, logits, c.step, counts[:, j], sub, self.cfg, temperature, c.stop,
                                      block), (BATCH, SEQUENCE))  # the response state along data, whole per row
        return _DenoiseCarry(c.step + 1, x_gen, counts, key, jnp.minimum(c.stop, first_stop(x_gen, self.cfg)),
                             caches, c.block if block is None else block)

    def initial_carry(self, batch: int, key: jax.Array) -> _DenoiseCarry:
        """Step 0's carry: every response slot masked, no stop found, no cache."""
        cfg = self.cfg
        x_gen = jnp.full((batch, cfg.gen_length), cfg.mask_id, jnp.int32)
        return _DenoiseCarry(jnp.int32(0), x_gen, self._block_counts(x_gen, jnp.int32(0)), key,
                             jnp.full((batch,), cfg.gen_length, jnp.int32), None, jnp.int32(0))

    def _full_step(self, state, prompt: _Prompt, c: _DenoiseCarry, rows=None, *, temperature, num_visual,
                   all_valid=False, later_bucket=None, score=False):
        """One denoising step at full length (step ``c.step``; the first step, and the scoring step of a
        during-generation method). Under approximate caching its keys / values become the cache. With ``score``:
        the visual tokens are scored from this step's attention (rows R: response positions masked before and
        after the step), the top ``keep`` stay and the prompt is compacted for every later step; the cache is
        compacted with it (``cfg.pruned_cache``). Returns (carry of the next step, prompt, kept)."""
        model = nnx.merge(self.graphdef, state)
        cfg, method = self.cfg, (self._during if score else None)
        b, p = prompt.key_valid.shape
        g = cfg.gen_length
        cached = cfg.cache != "none"
        block, _, counts, j = self._schedule(c)
        probe = None
        if method is not None:
            response = jnp.broadcast_to(p + jnp.arange(g, dtype=jnp.int32), (b, g))
            probe = Probe(response, tuple(method.probe_layers(self.num_layers)))
        logits, probe_out, *fresh = self._forward(model, prompt, c.x_gen, probe=probe, all_valid=all_valid,
                                                  caches=cached)
        out = self._advance(c, logits, block, counts, j, fresh[0] if cached else None, temperature=temperature)
        if method is None:
            return out, prompt, prompt.kept
        still_masked = (c.x_gen == cfg.mask_id) & (out.x_gen == cfg.mask_id)
        token_scores = method.token_scores(probe_out[:, :, :p], still_masked)
        new_prompt, kept, order = self._compact(prompt, token_scores, num_visual, rows, later_bucket)
        caches = None if not cached else self._compact_caches(model, out.caches, prompt, new_prompt, order)
        return dataclasses.replace(out, caches=caches), new_prompt, kept

    def _compact(self, prompt: _Prompt, token_scores, n_v: int, rows=None, keep_bucket=None):
        """Keeps the top visual tokens by ``token_scores`` float32 [B, P]; returns (compacted prompt, kept int32
        [B, keep] into the original visual tokens, the prompt slots that stay int32 [B, P'])."""
        method = self._during
        scores = visual_scores(token_scores, prompt.visual_mask, n_v)
        if rows is None:
            kept = select_topk(scores, method.keep)
        else:
            method = with_bucket(method, keep_bucket)
            kept = select_topk(scores, keep_bucket, visual_valid(prompt.key_valid, prompt.visual_mask, n_v),
                               rows.later_keep)
        order = compaction_order(prompt.visual_mask, kept, n_v)
        seq, vmask = compact(
            SequenceState(prompt.h, prompt.positions, prompt.key_valid), prompt.visual_mask, kept, n_v,
            reindex=method.reindex,
        )
        if prompt.kept is not None:  # indices into the original visual tokens
            kept = jnp.take_along_axis(prompt.kept, kept, axis=1)
        h_uncond = jnp.broadcast_to(prompt.h_uncond[:, :1], seq.h.shape)
        return _Prompt(seq.h, h_uncond, seq.positions, seq.key_valid, vmask, kept), kept, order

    def _compact_caches(self, model, caches: list, old: _Prompt, new: _Prompt, order) -> list:
        """The scoring step's caches (slots of ``old`` prompt + response) with the pruned visual tokens removed:
        every layer's keys / values gathered along the sequence (``order`` int32 [B, P'] for the prompt, then the
        response) and the keys re-rotated to their new positions. RoPE rotations compose (R(a)·R(b) = R(a + b) per
        frequency pair), so a cached key at old position p becomes the key at p' by a rotation by p' − p: exact
        for re-indexed positions too (without re-indexing the rotation is by 0, the identity)."""
        g = self.cfg.gen_length
        b, p_old = old.positions.shape
        slots = jnp.concatenate([order, jnp.broadcast_to(p_old + jnp.arange(g, dtype=jnp.int32), (b, g))], axis=1)
        old_pos = jnp.concatenate([old.positions, self._response_positions(old, g)], axis=1)
        new_pos = jnp.concatenate([new.positions, self._response_positions(new, g)], axis=1)
        cos, sin = model.language_model.angles(new_pos - jnp.take_along_axis(old_pos, slots, axis=1), jnp.float32)
        out = []
        for cache in caches:
            take = lambda x: jnp.take_along_axis(x, slots.reshape(slots.shape + (1,) * (x.ndim - 2)), axis=1)
            k = apply_rope(take(cache.k).astype(jnp.float32), cos, sin).astype(cache.k.dtype)
            out.append(LayerCache(k, take(cache.v), take(cache.valid), jnp.int32(slots.shape[1])).laid_out())
        return out

    def _denoise(self, state, prompt: _Prompt, carry: _DenoiseCarry, until, *, temperature, all_valid=False,
                 refresh_first=False):
        """The steps from ``carry.step`` up to ``until`` (int32 [], traced: one compilation for any bound) in one
        ``while_loop``; the loop ends early once every row is finished (:func:`rows_done`; never without the stop
        rule) or nothing is masked any more (the official loop would run the remaining steps, which change
        nothing). Approximate caching (``cfg.cache``): the first step of each block runs the whole sequence and
        refreshes ``carry.caches``; the others run :meth:`_window_logits` (a ``lax.cond`` in the one compiled
        loop). ``refresh_first`` (static): the loop's first step refreshes too (``pruned_cache="rebuild"`` after a
        during-generation method compacted the prompt). Returns the carry after the last step run
        (``carry.step`` = denoising steps run so far, step 0 included)."""
        cfg = self.cfg
        cached = cfg.cache != "none"
        parallel = cfg.threshold is not None
        start = carry.step
        until = jnp.minimum(until, cfg.max_steps)

        def cond(c: _DenoiseCarry):
            left = (c.step < until) & jnp.any(c.x_gen == cfg.mask_id)
            if parallel:  # at least one token per step and row: gen_length steps suffice
                return left & (current_block(c.x_gen, c.stop, cfg) < cfg.num_blocks)
            return left & ~jnp.all(rows_done(c.x_gen, c.stop, cfg))

        def body(c: _DenoiseCarry) -> _DenoiseCarry:
            model = nnx.merge(self.graphdef, loop_invariant_weights(state, c.step))  # converts stay in the loop
            block, opens, counts, j = self._schedule(c)
            if not cached:
                logits, _ = self._forward(model, prompt, c.x_gen, all_valid=all_valid)
                return self._advance(c, logits, block, counts, j, None, temperature=temperature)
            refresh = opens | (c.step == start) if refresh_first else opens

            def full(_):
                logits, _, fresh = self._forward(model, prompt, c.x_gen, all_valid=all_valid, caches=True)
                return logits, fresh

            def window(_):
                index = c.step // cfg.steps_per_block if block is None else block
                return self._window_logits(model, prompt, c.x_gen, c.caches, index * cfg.block_length), c.caches

            logits, caches = jax.lax.cond(refresh, full, window, None)
            return self._advance(c, logits, block, counts, j, caches, temperature=temperature)

        return jax.lax.while_loop(cond, body, carry)

    # ---- host API ------------------------------------------------------------------------------------------
    @within_mesh
    def generate_arrays(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, image_inputs: dict, *, temperature: float = 0.0,
        seed: int = 0,
    ) -> GenerationOutput:
        """Runs the sampler.

        input_ids / attention_mask int [B, P], left-padded; image_inputs: keyword arguments of
        ``model.image_features`` (arrays are traced, other values static). Rows may hold different numbers of
        image placeholders (their visual spans are padded, :mod:`vtp_jax.generation.visual_spans`). Returns tokens
        int [B, gen_length], kept visual indices (int [B, keep]; with rows of different N_v each row's own ``k_b``
        ascending, then −1) and timings (seconds).
        Raises SamplerError (a ValueError) before any work for a temperature that is negative or not finite or a
        seed outside [0, 2³² − 1] (:func:`vtp_jax.generation.sampling.check_sampler_settings`, shared with the
        autoregressive generator).
        """
        check_sampler_settings(temperature=temperature, seed=seed)
        arrays = {k: jnp.asarray(v) for k, v in image_inputs.items() if isinstance(v, (np.ndarray, jax.Array))}
        static = tuple(sorted((k, static_value(v)) for k, v in image_inputs.items() if k not in arrays))
        input_ids, attention_mask, n_visual = pad_visual_spans(input_ids, attention_mask, self.image_token_id)
        n_v = int(n_visual.max()) if n_visual.size else 0
        rows, pre_bucket, later_bucket = None, None, None
        if n_visual.size and not np.all(n_visual == n_v):
            rows, pre_bucket, later_bucket = self.row_plan(n_visual)
            n_left = pre_bucket if pre_bucket is not None else n_v
        else:
            n_left = n_v  # visual tokens that reach the first denoising step
            if self._pre is not None:
                self._pre.validate(n_v, self.num_layers)
                n_left = self._pre.keep
            if self._during is not None:
                self._during.validate(n_left, self.num_layers)
        encode_kw = {} if rows is None else {"rows": rows, "pre_bucket": pre_bucket}
        step_kw = {} if rows is None else {"rows": rows, "later_bucket": later_bucket}
        temperature = float(temperature)
        key = jax.random.key(seed)
        t0 = time.perf_counter()
        ids, mask = jnp.asarray(input_ids, jnp.int32), jnp.asarray(attention_mask)
        if self.mesh is not None:  # the batch along the mesh's data axis; weights are already sharded
            ids, mask, arrays = jax.tree.map(lambda x: shard_batch(x, self.mesh), (ids, mask, arrays))
        prompt = self.encode(self.state, ids, mask, arrays,
                             static=static, **encode_kw)
        jax.block_until_ready(prompt.h)
        t1 = time.perf_counter()
        kept_pre = prompt.kept  # the pre-LLM stage's selection (read back after the timed part)
        mask_kw = mask_free_kwargs(attention_mask)  # GPU, no padding: cuDNN attention in every step
        carry = self.initial_carry(int(input_ids.shape[0]), key)
        carry, prompt, kept = self.prune_steps(prompt, carry, temperature=temperature, num_visual=n_left,
                                               step_kw=step_kw, **mask_kw)
        carry = self.denoise(self.state, prompt, carry, jnp.int32(self.cfg.max_steps), temperature=temperature,
                             refresh_first=self.rebuilds_cache, **mask_kw)
        tokens = to_host(jax.block_until_ready(carry.x_gen))
        steps_run = carry.step
        t2 = time.perf_counter()
        kept = np.broadcast_to(np.arange(n_v), (tokens.shape[0], n_v)) if kept is None else to_host(kept)
        counts = [count_new_tokens(row, self.cfg.stop_ids) for row in tokens]
        kept = unpad_kept(kept, n_visual) if rows is not None else kept
        stages = {}
        if self._pre is not None:
            kept_pre = to_host(kept_pre)
            stages[self._pre.name] = unpad_kept(kept_pre, n_visual) if rows is not None else kept_pre
        if self._during is not None:
            stages[self._during.name] = kept
        return GenerationOutput(tokens=tokens, kept=kept, num_new_tokens=counts, kind=MASKED_DIFFUSION,
                                decode_s=t2 - t1, encode_s=t1 - t0, stages=stages, steps=int(steps_run))

    def prune_steps(self, prompt: _Prompt, carry: _DenoiseCarry, *, temperature: float, num_visual: int,
                    step_kw: dict | None = None, all_valid: bool = False):
        """The steps up to and including the scoring step, from ``carry`` (step 0): step 0 at full length; with a
        during-generation method whose ``score_step`` s > 0, steps 1 … s − 1 in the denoising loop on the whole
        prompt and step s at full length, scoring and compacting. Returns (carry of the next step, the prompt the
        later steps see, kept visual indices int32 [B, keep] or None)."""
        kw = dict(temperature=temperature, num_visual=num_visual, all_valid=all_valid, **(step_kw or {}))
        if self._during is None:
            return self.first_step(self.state, prompt, carry, score=False, **kw)
        s = self._during.score_step
        if s > 0:
            carry, _, _ = self.first_step(self.state, prompt, carry, score=False, **kw)
            carry = self.denoise(self.state, prompt, carry, jnp.int32(s), temperature=temperature,
                                 all_valid=all_valid)
            if int(carry.step) < s:  # the loop ended before the scoring step (nothing left to unmask): no pruning
                return carry, prompt, prompt.kept
        pruned, short, kept = self.first_step(self.state, prompt, carry, score=True, **kw)
        if not bool(jnp.any(pruned.x_gen == self.cfg.mask_id)):
            # nothing is masked after the scoring step: the answer is complete and the official code skips pruning
            # (reported as no pruning; the compacted prompt is kept only so that the loop's shapes stay as usual)
            return pruned, short, prompt.kept
        return pruned, short, kept

    @property
    def rebuilds_cache(self) -> bool:
        """Whether the loop after a during-generation method's compaction rebuilds the cache at its first step."""
        return self._during is not None and self.cfg.cache != "none" and self.cfg.pruned_cache == "rebuild"

    def row_plan(self, counts: np.ndarray) -> tuple[RowCounts, int | None, int | None]:
        """Per-row keep counts of a batch whose rows hold ``counts`` int [B] visual tokens (not all equal):
        (:class:`vtp_jax.generation.visual_spans.RowCounts`, the pre-LLM keep bucket, the after-first-step keep
        bucket; None where the stage is absent). Validates every method against every row. Raises PruningError."""
        pre_keep, later_keep, _ = stage_keeps(self._pre, self._during, counts, self.num_layers)
        return RowCounts.of(counts, pre_keep, later_keep), bucket(pre_keep), bucket(later_keep)

    def generate(self, batch, settings) -> GenerationOutput:
        """The shared interface: ``batch`` (``input_ids``, ``attention_mask``, ``image_inputs``; a
        :class:`vtp_jax.processing.Batch`) and :class:`vtp_jax.generation.SamplerSettings` (``temperature``,
        ``seed``; lengths come from this generator's DiffusionConfig) → :meth:`generate_arrays`."""
        return self.generate_arrays(batch.input_ids, batch.attention_mask, batch.image_inputs,
                             temperature=settings.temperature, seed=settings.seed)

    def compiled_counts(self) -> dict[str, int]:
        """Compiled variants per jitted function (static-shape tests)."""
        return {n: getattr(self, n)._cache_size() for n in ("encode", "first_step", "denoise")}
