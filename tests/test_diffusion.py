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

from tests.diffusion_case import MASK, make_model, prompts, reference_counts
from vtp_jax.generation.diffusion import DiffusionConfig, DiffusionError, DiffusionGenerator, num_transfer_tokens


@pytest.fixture(scope="module")
def model():
    return make_model()


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
        counts = reference_counts((x[:, s:e] == cfg.mask_id).sum(1), spb)
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
        counts = reference_counts((x[:, s:e] == cfg.mask_id).sum(1), spb)
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
