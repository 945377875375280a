"""The masked-diffusion sampler against a plain NumPy re-implementation of LLaDA's ``generate`` loop.

The reference follows LLaDA's code (``get_num_transfer_tokens``, ``add_gumbel_noise`` in float64 as
``exp(logits) / (−log u)^T``, softmax confidence in float64, top-k per row) and is fed the same uniform noise.
Logits come from the model's plain full forward (no jit, no pruning) on the whole sequence.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vtp_jax.config import LlavaConfig, TextConfig, VisionConfig
from vtp_jax.generation.diffusion import DiffusionConfig, DiffusionError, DiffusionGenerator, num_transfer_tokens
from vtp_jax.modeling.llava import Llava

MASK, IMG, PAD = 95, 5, 0
TINY = LlavaConfig(
    vision=VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        image_size=32, patch_size=8),
    text=TextConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=8, causal=False),
    image_token_id=IMG,
)


@pytest.fixture(scope="module")
def model():
    m = Llava(TINY, rngs=nnx.Rngs(1))
    # larger weights than the default init so that logits are far from uniform and choices are not ties
    state = nnx.state(m, nnx.Param)
    leaves = jax.tree.leaves(state)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    nnx.update(m, jax.tree.map(lambda x, k: x + 0.3 * jax.random.normal(k, x.shape, x.dtype), state,
                               jax.tree.unflatten(jax.tree.structure(state), list(keys))))
    return m


def prompts(batch: int):
    n_v = TINY.vision.num_patches
    rows = [[1, 7, 8] + [IMG] * n_v + [9, 10, 11], [1, 12] + [IMG] * n_v + [13]][:batch]
    t = 32
    ids = np.full((batch, t), PAD, np.int32)
    mask = np.zeros((batch, t), np.int32)
    for b, r in enumerate(rows):
        ids[b, t - len(r):] = r
        mask[b, t - len(r):] = 1
    pixels = np.random.default_rng(0).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    return ids, mask, pixels


def reference_generate(model, ids, mask, pixels, cfg: DiffusionConfig, temperature: float, seed: int):
    """LLaDA's loop in NumPy (float64), consuming the same PRNG draws as the jitted sampler."""
    b, p = ids.shape
    g = cfg.gen_length
    x = np.concatenate([ids, np.full((b, g), cfg.mask_id, np.int32)], axis=1)
    full_mask = np.concatenate([mask, np.ones((b, g), np.int32)], axis=1)
    prompt_index = np.zeros_like(x, bool)
    prompt_index[:, :p] = mask.astype(bool)
    forward = jax.jit(lambda i, px, m: model(i, px, m))
    key = jax.random.key(seed)
    spb = cfg.steps_per_block
    step = 0
    for blk in range(cfg.num_blocks):
        s, e = p + blk * cfg.block_length, p + (blk + 1) * cfg.block_length
        block_masked = (x[:, s:e] == cfg.mask_id).sum(1)
        counts = np.zeros((b, spb), np.int64) + (block_masked // spb)[:, None]
        for j in range(b):
            counts[j, : block_masked[j] % spb] += 1
        for i in range(spb):
            masked = x == cfg.mask_id
            logits = np.asarray(forward(jnp.asarray(x), jnp.asarray(pixels), jnp.asarray(full_mask)), np.float64)
            if cfg.cfg > 0:
                un_x = np.where(prompt_index, cfg.mask_id, x)
                un = np.asarray(forward(jnp.asarray(un_x), jnp.asarray(pixels), jnp.asarray(full_mask)), np.float64)
                logits = un + (cfg.cfg + 1) * (logits - un)
            key, sub = jax.random.split(key)
            k_noise, k_conf = jax.random.split(sub)
            gl = logits[:, p:]
            u = np.asarray(jax.random.uniform(k_noise, gl.shape, jnp.float32, minval=jnp.finfo(jnp.float32).tiny,
                                              maxval=1.0), np.float64)
            if temperature > 0:
                x0 = np.argmax(np.exp(gl) / (-np.log(u)) ** temperature, axis=-1)
            else:
                x0 = np.argmax(gl, axis=-1)
            if cfg.remasking == "low_confidence":
                pr = np.exp(gl - gl.max(-1, keepdims=True))
                pr /= pr.sum(-1, keepdims=True)
                conf = np.take_along_axis(pr, x0[..., None], -1)[..., 0]
            else:
                conf = np.asarray(jax.random.uniform(k_conf, (b, g), jnp.float32), np.float64)
            conf[:, e - p:] = -np.inf
            gm = masked[:, p:]
            x0 = np.where(gm, x0, x[:, p:])
            conf = np.where(gm, conf, -np.inf)
            for r in range(b):
                top = np.argsort(-conf[r], kind="stable")[: counts[r, i]]
                x[r, p + top] = x0[r, top]
            step += 1
    return x[:, p:]


@pytest.mark.parametrize(
    "gen,block,steps,remasking,temperature,cfg_scale",
    [
        (8, 8, 4, "low_confidence", 0.0, 0.0),
        (8, 4, 4, "low_confidence", 0.0, 0.0),
        (8, 4, 4, "random", 0.0, 0.0),
        (8, 4, 6, "low_confidence", 0.8, 0.0),
        (6, 3, 4, "random", 1.0, 0.0),
        (8, 4, 4, "low_confidence", 0.0, 0.5),
    ],
)
def test_sampler_matches_numpy_llada_loop(model, gen, block, steps, remasking, temperature, cfg_scale):
    ids, mask, pixels = prompts(2)
    cfg = DiffusionConfig(gen_length=gen, block_length=block, steps=steps, remasking=remasking, cfg=cfg_scale,
                          mask_id=MASK)
    ours = DiffusionGenerator(model, cfg).generate_arrays(ids, mask, {"pixel_values": pixels}, temperature=temperature,
                                                     seed=3)
    ref = reference_generate(model, ids.copy(), mask, pixels, cfg, temperature, seed=3)
    np.testing.assert_array_equal(ours.tokens, ref)
    assert (ours.tokens != MASK).all(), "every position must be unmasked at the end"
    assert len(np.unique(ours.tokens)) > 2, "degenerate output; the comparison would prove little"


def test_num_transfer_tokens():
    np.testing.assert_array_equal(num_transfer_tokens(jnp.array([7, 8, 2]), 3),
                                  [[3, 2, 2], [3, 3, 2], [1, 1, 0]])


def test_one_compilation_for_all_steps_and_blocks(model):
    ids, mask, pixels = prompts(2)
    gen = DiffusionGenerator(model, DiffusionConfig(gen_length=8, block_length=2, steps=8, mask_id=MASK))
    gen.generate_arrays(ids, mask, {"pixel_values": pixels})
    gen.generate_arrays(ids[:, ::1].copy(), mask, {"pixel_values": pixels[::-1].copy()}, seed=4)
    assert gen.compiled_counts() == {"encode": 1, "first_step": 1, "denoise": 1}


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(gen_length=10, block_length=4), "divisible by block_length"),
        (dict(gen_length=8, block_length=4, steps=3), "divisible by the number of blocks"),
        (dict(remasking="nope"), "remasking must be"),
    ],
)
def test_bad_settings(kwargs, needle):
    with pytest.raises(DiffusionError, match=needle):
        DiffusionConfig(**kwargs).validate()


def reference_generate_with_stop(model, ids, mask, pixels, cfg: DiffusionConfig, stop_ids, temperature: float,
                                 seed: int):
    """LLaDA-V's ``generate_with_embeds`` with ``stopping_criteria`` (ML-GSAI/LLaDA-V, ``modeling_llada.py``), in
    NumPy (float64), row by row as the batch-1 official loop runs each prompt, consuming the jitted sampler's PRNG
    draws (one split per forward pass).

    Per block: a row whose stop position lies at or before the block start is finished. Per step, a row leaves the
    block when it found a stop and nothing before it is masked, or when its block holds no masked position; the
    loop ends when no row is left. Confidence is −∞ from the stop position on once a stop id is unmasked (else from
    the block end); the step's quota is filled from finite confidences only (see ``unmask_step``). After every
    step the first unmasked stop id of the response sets the stop position. Returns (response ids [B, G], forward
    passes).
    """
    b, p = ids.shape
    g = cfg.gen_length
    x = np.concatenate([ids, np.full((b, g), cfg.mask_id, np.int32)], axis=1)
    full_mask = np.concatenate([mask, np.ones((b, g), np.int32)], axis=1)
    forward = jax.jit(lambda i, px, m: model(i, px, m))
    key = jax.random.key(seed)
    spb, stop, passes = cfg.steps_per_block, np.full(b, g), 0
    for blk in range(cfg.num_blocks):
        s, e = p + blk * cfg.block_length, p + (blk + 1) * cfg.block_length
        if all(stop[r] <= blk * cfg.block_length for r in range(b)):
            break
        block_masked = (x[:, s:e] == cfg.mask_id).sum(1)
        counts = np.zeros((b, spb), np.int64) + (block_masked // spb)[:, None]
        for j in range(b):
            counts[j, : block_masked[j] % spb] += 1
        for i in range(spb):
            masked = x == cfg.mask_id
            active = [not (stop[r] < g and not masked[r, p:p + stop[r]].any()) and masked[r, s:e].any()
                      and stop[r] > blk * cfg.block_length for r in range(b)]
            if not any(active):
                break
            logits = np.asarray(forward(jnp.asarray(x), jnp.asarray(pixels), jnp.asarray(full_mask)), np.float64)
            key, sub = jax.random.split(key)
            k_noise, _ = jax.random.split(sub)
            gl = logits[:, p:]
            u = np.asarray(jax.random.uniform(k_noise, gl.shape, jnp.float32, minval=jnp.finfo(jnp.float32).tiny,
                                              maxval=1.0), np.float64)
            x0 = np.argmax(np.exp(gl) / (-np.log(u)) ** temperature, axis=-1) if temperature > 0 else gl.argmax(-1)
            pr = np.exp(gl - gl.max(-1, keepdims=True))
            conf = np.take_along_axis(pr / pr.sum(-1, keepdims=True), x0[..., None], -1)[..., 0]
            for r in range(b):
                conf[r, (stop[r] if stop[r] < g else e - p):] = -np.inf
            gm = masked[:, p:]
            x0 = np.where(gm, x0, x[:, p:])
            conf = np.where(gm, conf, -np.inf)
            for r in range(b):
                if active[r]:
                    top = [t for t in np.argsort(-conf[r], kind="stable")[: counts[r, i]] if np.isfinite(conf[r, t])]
                    x[r, p + np.asarray(top, int)] = x0[r, top]
            passes += 1
            for r in range(b):
                hits = np.flatnonzero(np.isin(x[r, p:], stop_ids))
                if hits.size:
                    stop[r] = min(stop[r], hits[0])
    return x[:, p:], passes


@pytest.mark.parametrize("gen,block,steps,temperature", [(8, 4, 8, 0.0), (8, 8, 4, 0.0), (8, 4, 8, 0.7)])
def test_official_stop_rule_matches_generate_with_embeds(model, gen, block, steps, temperature):
    """Stop ids that appear early (taken from the unstopped run: each row's second token) end the rows as the
    official loop does: tokens, masks after the stop and the number of forward passes agree."""
    ids, mask, pixels = prompts(2)
    plain = DiffusionConfig(gen_length=gen, block_length=block, steps=steps, mask_id=MASK)
    free = DiffusionGenerator(model, plain).generate_arrays(ids, mask, {"pixel_values": pixels},
                                                            temperature=temperature, seed=5)
    assert free.steps == steps  # no stop ids: every step runs, as before
    stop_ids = tuple(sorted({int(free.tokens[0, 1]), int(free.tokens[1, 1])}))
    cfg = dataclasses.replace(plain, stop_ids=stop_ids)
    ours = DiffusionGenerator(model, cfg).generate_arrays(ids, mask, {"pixel_values": pixels},
                                                          temperature=temperature, seed=5)
    ref, passes = reference_generate_with_stop(model, ids.copy(), mask, pixels, cfg, stop_ids, temperature, seed=5)
    np.testing.assert_array_equal(ours.tokens, ref)
    assert ours.steps == passes
    first = [int(np.flatnonzero(np.isin(r, stop_ids))[0]) for r in ours.tokens if np.isin(r, stop_ids).any()]
    assert first, "the stop id never appeared: the test would prove nothing"
    assert (ours.tokens == MASK).any(), "the stop rule changed nothing"
    if (gen, block, steps) == (8, 4, 8):
        assert ours.steps < steps  # every row finished early: the loop exits
    off = DiffusionGenerator(model, dataclasses.replace(cfg, early_stop=False)).generate_arrays(
        ids, mask, {"pixel_values": pixels}, temperature=temperature, seed=5)
    np.testing.assert_array_equal(off.tokens, free.tokens)  # early_stop=False: LLaDA's plain loop


def _qkv(layer, h, cos, sin):
    """A decoder block's queries, keys (both after RoPE) and values of the rows h [B, T, D], from the model's own
    norm and projections."""
    from vtp_jax.modeling.rope import apply_rope

    attn = layer.self_attn
    x = layer.input_layernorm(h)
    b, t, _ = x.shape
    q = apply_rope(attn.q_proj(x).reshape(b, t, attn.num_heads, attn.head_dim), cos, sin)
    k = apply_rope(attn.k_proj(x).reshape(b, t, attn.num_kv_heads, attn.head_dim), cos, sin)
    v = attn.v_proj(x).reshape(b, t, attn.num_kv_heads, attn.head_dim)
    return q, k, v


def reference_fast_dllm(model, ids, mask, pixels, cfg: DiffusionConfig, mode: str):
    """Fast-dLLM's approximate caching (NVlabs/Fast-dLLM ``generate_with_prefix_cache`` /
    ``generate_with_dual_cache``) over LLaDA's greedy low-confidence loop, attention in NumPy float64.

    First step of each block: the whole sequence; every layer's keys / values are kept. Later steps: prefix — the
    rows from the block start to the end are computed, attending to the kept keys before the block and their own
    keys from it on; dual — the block's rows only, attending to the kept keys with the block's replaced.
    Returns the response ids [B, G]."""
    b, p = ids.shape
    g, blk_len = cfg.gen_length, cfg.block_length
    x = np.concatenate([ids, np.full((b, g), cfg.mask_id, np.int32)], axis=1)
    valid = np.concatenate([mask, np.ones((b, g), np.int32)], axis=1).astype(bool)
    positions = np.maximum(np.cumsum(valid, 1) - 1, 0)
    lm = model.language_model
    visual = model.image_features(jnp.asarray(pixels))
    spb = cfg.steps_per_block

    def run(rows, kept):
        """Logits float64 [B, len(rows), V] of sequence slots ``rows``; kept: per-layer (k, v) or None (a full
        pass, whose keys are returned)."""
        h, _ = model.embed(jnp.asarray(x), visual)
        h = h[:, rows]
        cos, sin = lm.angles(jnp.asarray(positions[:, rows]), h.dtype)
        new = []
        for i, layer in enumerate(lm.layers):
            q, k, v = _qkv(layer, h, cos, sin)
            if kept is None:
                keys, vals = np.asarray(k, np.float64), np.asarray(v, np.float64)
            else:
                keys, vals = kept[i][0].copy(), kept[i][1].copy()
                fresh = rows >= (fresh_from if mode == "prefix" else rows[0])
                keys[:, rows[fresh]] = np.asarray(k, np.float64)[:, fresh]
                vals[:, rows[fresh]] = np.asarray(v, np.float64)[:, fresh]
            new.append((keys, vals))
            rep = layer.self_attn.num_heads // layer.self_attn.num_kv_heads
            kk, vv = np.repeat(keys, rep, axis=2), np.repeat(vals, rep, axis=2)
            logits = np.einsum("bthd,bshd->bhts", np.asarray(q, np.float64), kk) / np.sqrt(q.shape[-1])
            logits = np.where(valid[:, None, None, :], logits, -np.inf)
            w = np.exp(logits - logits.max(-1, keepdims=True))
            w /= w.sum(-1, keepdims=True)
            out = np.einsum("bhts,bshd->bthd", w, vv).reshape(b, len(rows), -1).astype(np.float32)
            a = layer.self_attn.o_proj(jnp.asarray(out))
            h = h + a
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return np.asarray(model.logits(lm.norm(h)), np.float64), new

    kept = None
    for blk in range(cfg.num_blocks):
        s, e = p + blk * blk_len, p + (blk + 1) * blk_len
        fresh_from = s
        block_masked = (x[:, s:e] == cfg.mask_id).sum(1)
        counts = np.zeros((b, spb), np.int64) + (block_masked // spb)[:, None]
        for j in range(b):
            counts[j, : block_masked[j] % spb] += 1
        for i in range(spb):
            if i == 0:
                logits, kept = run(np.arange(p + g), None)
                gl = logits[:, p:]
            elif mode == "prefix":
                gl = np.zeros((b, g, logits.shape[-1]))
                gl[:, s - p:] = run(np.arange(s, p + g), kept)[0]
            else:
                gl = np.zeros((b, g, logits.shape[-1]))
                gl[:, s - p:e - p] = run(np.arange(s, e), kept)[0]
            x0 = gl.argmax(-1)
            pr = np.exp(gl - gl.max(-1, keepdims=True))
            conf = np.take_along_axis(pr / pr.sum(-1, keepdims=True), x0[..., None], -1)[..., 0]
            conf[:, e - p:] = -np.inf
            gm = x[:, p:] == cfg.mask_id
            x0 = np.where(gm, x0, x[:, p:])
            conf = np.where(gm, conf, -np.inf)
            for r in range(b):
                top = np.argsort(-conf[r], kind="stable")[: counts[r, i]]
                x[r, p + top] = x0[r, top]
    return x[:, p:]


@pytest.mark.parametrize("gen,block,steps", [(16, 8, 16), (8, 4, 8)])
def test_approximate_cache_matches_fast_dllm(model, gen, block, steps):
    """Prefix and dual cache each equal a NumPy re-implementation of Fast-dLLM's caching (batch 2 with left
    padding, two blocks), with one compiled loop for every step and block; at 16 / 8 / 16 the three modes give
    three different answers, so each comparison can fail."""
    ids, mask, pixels = prompts(2)
    tokens = {}
    for mode in ("none", "prefix", "dual"):
        cfg = DiffusionConfig(gen_length=gen, block_length=block, steps=steps, mask_id=MASK, cache=mode)
        gen_ = DiffusionGenerator(model, cfg)
        tokens[mode] = gen_.generate_arrays(ids, mask, {"pixel_values": pixels}).tokens
        if mode != "none":
            np.testing.assert_array_equal(tokens[mode], reference_fast_dllm(model, ids.copy(), mask, pixels, cfg, mode),
                                          err_msg=mode)
            gen_.generate_arrays(ids, mask, {"pixel_values": pixels[::-1].copy()}, seed=2)
            assert gen_.compiled_counts() == {"encode": 1, "first_step": 1, "denoise": 1}
    if (gen, block, steps) == (16, 8, 16):
        assert len({t.tobytes() for t in tokens.values()}) == 3, "the modes should differ on this setting"
    with pytest.raises(DiffusionError, match="classifier-free guidance"):
        DiffusionConfig(mask_id=MASK, cache="dual", cfg=1.0).validate()
    with pytest.raises(DiffusionError, match="cache must be one of"):
        DiffusionConfig(mask_id=MASK, cache="full").validate()


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_approximate_cache_with_redvtp(model, mode):
    """RedVTP scores at step 0 (a full pass either way) and compacts the prompt; the cached loop rebuilds its
    cache from the compacted prompt at step 1. With one step per block every step refreshes, so cached and uncached
    loops agree exactly; with four per block the kept tokens agree and the loop compiles once."""
    from vtp_jax.pruning.redvtp import RedVTP

    ids, mask, pixels = prompts(2)
    method = RedVTP(keep=6)
    one = DiffusionConfig(gen_length=8, block_length=2, steps=4, mask_id=MASK, cache=mode)
    a = DiffusionGenerator(model, one, method).generate_arrays(ids, mask, {"pixel_values": pixels})
    b = DiffusionGenerator(model, dataclasses.replace(one, cache="none"), method).generate_arrays(
        ids, mask, {"pixel_values": pixels})
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.kept, b.kept)
    four = dataclasses.replace(one, block_length=4, steps=8)
    gen = DiffusionGenerator(model, four, method)
    c = gen.generate_arrays(ids, mask, {"pixel_values": pixels})
    d = DiffusionGenerator(model, dataclasses.replace(four, cache="none"), method).generate_arrays(
        ids, mask, {"pixel_values": pixels})
    np.testing.assert_array_equal(c.kept, d.kept)
    assert c.kept.shape == (2, 6) and (c.tokens != MASK).all()
    gen.generate_arrays(ids, mask, {"pixel_values": pixels[::-1].copy()}, seed=1)
    assert gen.compiled_counts() == {"encode": 1, "first_step": 1, "denoise": 1}
