"""Fast-dLLM on the masked-diffusion sampler: approximate KV caching (prefix / dual) and parallel decoding (a
confidence threshold), each against a NumPy float64 re-implementation of Fast-dLLM's algorithm (NVlabs/Fast-dLLM,
arXiv 2505.22618), alone and with RedVTP."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from tests.diffusion_case import MASK, make_model, prompts, reference_counts
from vtp_jax.generation.diffusion import DiffusionConfig, DiffusionError, DiffusionGenerator


@pytest.fixture(scope="module")
def model():
    return make_model()


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


def reference_fast_dllm(model, ids, mask, pixels, cfg: DiffusionConfig, mode: str, threshold: float | None = None):
    """Fast-dLLM's approximate caching (NVlabs/Fast-dLLM ``generate_with_prefix_cache`` /
    ``generate_with_dual_cache``) over LLaDA's greedy low-confidence loop, attention in NumPy float64.

    First step of each block: the whole sequence; every layer's keys / values are kept. Later steps: prefix — the
    rows from the block start to the end are computed, attending to the kept keys before the block and their own
    keys from it on; dual — the block's rows only, attending to the kept keys with the block's replaced; none —
    every step a full pass. ``threshold``: Fast-dLLM's parallel decoding — a block runs until complete, each step
    unmasking the most confident masked position of the block and every other one with confidence ≥ τ.
    Returns (response ids [B, G], forward passes)."""
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

    kept, passes = None, 0
    for blk in range(cfg.num_blocks):
        s, e = p + blk * blk_len, p + (blk + 1) * blk_len
        fresh_from = s
        counts = reference_counts((x[:, s:e] == cfg.mask_id).sum(1), spb)
        i = 0
        while (i < spb) if threshold is None else (x[:, s:e] == cfg.mask_id).any():
            passes += 1
            if i == 0 or mode == "none":
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
                order = np.argsort(-conf[r], kind="stable")
                if threshold is None:
                    top = order[: counts[r, i]]
                else:
                    top = [t for k, t in enumerate(order)
                           if np.isfinite(conf[r, t]) and (k == 0 or conf[r, t] >= threshold)]
                x[r, p + np.asarray(top, int)] = x0[r, top]
            i += 1
    return x[:, p:], passes


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
            np.testing.assert_array_equal(tokens[mode], reference_fast_dllm(model, ids.copy(), mask, pixels, cfg,
                                                                            mode)[0], err_msg=mode)
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


@pytest.mark.parametrize("mode", ["none", "prefix", "dual"])
@pytest.mark.parametrize("threshold", [0.9, 0.1])
def test_parallel_decoding_matches_fast_dllm_threshold_rule(model, mode, threshold):
    """--threshold τ: each step unmasks the block's most confident masked position and every one with confidence
    ≥ τ, a block runs until complete; tokens and the number of forward passes equal the NumPy re-implementation
    (every cache mode, batch 2 with padding, two blocks), with one compilation for any τ-driven step count."""
    ids, mask, pixels = prompts(2)
    cfg = DiffusionConfig(gen_length=16, block_length=8, steps=16, mask_id=MASK, cache=mode, threshold=threshold)
    gen = DiffusionGenerator(model, cfg)
    out = gen.generate_arrays(ids, mask, {"pixel_values": pixels})
    ref, passes = reference_fast_dllm(model, ids.copy(), mask, pixels, cfg, mode, threshold=threshold)
    np.testing.assert_array_equal(out.tokens, ref)
    assert out.steps == passes and (out.tokens != MASK).all()
    if threshold == 0.1:  # the tiny model's confidences are low: τ = 0.1 unmasks several tokens per step
        assert out.steps < cfg.steps // 2  # far fewer passes than LLaDA's schedule
    gen.generate_arrays(ids, mask, {"pixel_values": pixels[::-1].copy()}, seed=3)
    assert gen.compiled_counts() == {"encode": 1, "first_step": 1, "denoise": 1}
    with pytest.raises(DiffusionError, match="threshold must be a number in"):
        dataclasses.replace(cfg, threshold=0.0).validate()
