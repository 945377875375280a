"""Fast-dLLM on the masked-diffusion sampler: approximate KV caching (prefix / dual) and parallel decoding (a
confidence threshold), each against a NumPy float64 re-implementation of Fast-dLLM's algorithm (NVlabs/Fast-dLLM,
arXiv 2505.22618), alone and with RedVTP."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from tests.diffusion_case import IMG, MASK, make_model, prompts, reference_counts
from vtp_jax.generation.diffusion import DiffusionConfig, DiffusionError, DiffusionGenerator


@pytest.fixture(scope="module")
def model():
    return make_model()


def _qkv(layer, h, cos, sin):
    """A decoder block's queries (after RoPE), keys (before RoPE) and values of the rows h [B, T, D], from the
    model's own norm and projections."""
    from vtp_jax.modeling.rope import apply_rope

    attn = layer.self_attn
    x = layer.input_layernorm(h)
    b, t, _ = x.shape
    q = apply_rope(attn.q_proj(x).reshape(b, t, attn.num_heads, attn.head_dim), cos, sin)
    k = attn.k_proj(x).reshape(b, t, attn.num_kv_heads, attn.head_dim)
    v = attn.v_proj(x).reshape(b, t, attn.num_kv_heads, attn.head_dim)
    return q, k, v


def _rotate(k, positions, theta):
    """RoPE in NumPy float64 (the half-split layout): keys k [B, S, K, D] at positions int [B, S]."""
    d = k.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    ang = positions[..., None] * inv
    cos, sin = np.cos(np.concatenate([ang, ang], -1))[:, :, None], np.sin(np.concatenate([ang, ang], -1))[:, :, None]
    return k * cos + np.concatenate([-k[..., d // 2:], k[..., : d // 2]], -1) * sin


def reference_fast_dllm(model, ids, mask, pixels, cfg: DiffusionConfig, mode: str, threshold: float | None = None,
                        redvtp: dict | None = None):
    """Fast-dLLM's approximate caching (NVlabs/Fast-dLLM ``generate_with_prefix_cache`` /
    ``generate_with_dual_cache``) over LLaDA's greedy low-confidence loop, attention in NumPy float64.

    First step of each block: the whole sequence; every layer's keys / values are kept. Later steps: prefix — the
    rows from the block start to the end are computed, attending to the kept keys before the block and their own
    keys from it on; dual — the block's rows only, attending to the kept keys with the block's replaced; none —
    every step a full pass. ``threshold``: Fast-dLLM's parallel decoding — a block runs until complete, each step
    unmasking the most confident masked position of the block and every other one with confidence ≥ τ.
    ``redvtp`` (keep, step, reindex, pruned_cache): RedVTP at global step ``step``, a full pass — every visual token
    scored by its attention from the response rows masked before and after the step (mean over rows, heads and
    layers), the top ``keep`` stay, the others leave the sequence (positions re-indexed over the valid tokens with
    ``reindex``); the kept keys / values stay cached ("compact": keys are kept before RoPE here and rotated with
    their current positions at every attention — an independent route to the sampler's re-rotation) or the next
    step is a full pass ("rebuild").
    Returns (response ids [B, G], forward passes)."""
    b, p0 = ids.shape
    g, blk_len = cfg.gen_length, cfg.block_length
    x = np.concatenate([ids, np.full((b, g), cfg.mask_id, np.int32)], axis=1)
    valid_full = np.concatenate([mask, np.ones((b, g), np.int32)], axis=1).astype(bool)
    slots = np.broadcast_to(np.arange(p0 + g), (b, p0 + g)).copy()  # the sequence's slots into the full one
    positions = np.maximum(np.cumsum(valid_full, 1) - 1, 0)
    lm = model.language_model
    theta = lm.cfg.rope.theta
    visual = model.image_features(jnp.asarray(pixels))
    spb = cfg.steps_per_block
    probs = []

    def run(rows, kept, probe=False):
        """Logits float64 [B, len(rows), V] of sequence slots ``rows``; kept: per-layer (k before RoPE, v) or None
        (a full pass, whose keys are returned)."""
        h_full, _ = model.embed(jnp.asarray(x), visual)
        h = jnp.take_along_axis(h_full, jnp.asarray(slots[:, rows])[..., None], axis=1)
        valid = np.take_along_axis(valid_full, slots, 1)
        cos, sin = lm.angles(jnp.asarray(positions[:, rows]), h.dtype)
        new = []
        probs.clear()
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
            kk = np.repeat(_rotate(keys, positions, theta), rep, axis=2)
            vv = np.repeat(vals, rep, axis=2)
            logits = np.einsum("bthd,bshd->bhts", np.asarray(q, np.float64), kk) / np.sqrt(q.shape[-1])
            logits = np.where(valid[:, None, None, :], logits, -np.inf)
            w = np.exp(logits - logits.max(-1, keepdims=True))
            w /= w.sum(-1, keepdims=True)
            probs.append(w)
            out = np.einsum("bhts,bshd->bthd", w, vv).reshape(b, len(rows), -1).astype(np.float32)
            a = layer.self_attn.o_proj(jnp.asarray(out))
            h = h + a
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return np.asarray(model.logits(lm.norm(h)), np.float64), new

    def prune(still):
        """RedVTP on the last full pass's attention: the sequence (slots, positions) and the cache shortened."""
        nonlocal slots, positions, kept, p
        att = np.mean([w.mean(1) for w in probs], axis=0)  # [B, T, T]: mean over layers and heads
        is_vis = np.take_along_axis(x, slots, 1)[:, :p] == IMG
        stay = np.ones(slots.shape, bool)
        for r in range(b):
            score = att[r, p:][still[r]].mean(0)[:p][is_vis[r]] if still[r].any() else np.zeros(is_vis[r].sum())
            vis = np.flatnonzero(is_vis[r])
            top = np.sort(np.argsort(-score, kind="stable")[: redvtp["keep"]])
            stay[r, np.setdiff1d(vis, vis[top])] = False
        order = np.stack([np.flatnonzero(stay[r]) for r in range(b)])
        slots = np.take_along_axis(slots, order, 1)
        positions = np.take_along_axis(positions, order, 1)
        if redvtp.get("reindex", True):
            positions = np.maximum(np.cumsum(np.take_along_axis(valid_full, slots, 1), 1) - 1, 0)
        kept = [(np.take_along_axis(k, order[..., None, None], 1), np.take_along_axis(v, order[..., None, None], 1))
                for k, v in kept]
        p = p - (len(vis) - redvtp["keep"])

    kept, passes, step, rebuild, p = None, 0, 0, False, p0
    for blk in range(cfg.num_blocks):
        i = 0
        counts = reference_counts((x[:, p0 + blk * blk_len:p0 + (blk + 1) * blk_len] == cfg.mask_id).sum(1), spb)
        while (i < spb) if threshold is None else (x[:, p0 + blk * blk_len:p0 + (blk + 1) * blk_len] == cfg.mask_id).any():
            s, e = p + blk * blk_len, p + (blk + 1) * blk_len
            fresh_from = s
            scoring = redvtp is not None and step == redvtp["step"]
            passes += 1
            if i == 0 or mode == "none" or scoring or rebuild:
                logits, kept = run(np.arange(p + g), None)
                gl, rebuild = logits[:, p:], False
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
            gm = x[:, p0:] == cfg.mask_id
            x0 = np.where(gm, x0, x[:, p0:])
            conf = np.where(gm, conf, -np.inf)
            for r in range(b):
                order = np.argsort(-conf[r], kind="stable")
                if threshold is None:
                    top = order[: counts[r, i]]
                else:
                    top = [t for k, t in enumerate(order)
                           if np.isfinite(conf[r, t]) and (k == 0 or conf[r, t] >= threshold)]
                x[r, p0 + np.asarray(top, int)] = x0[r, top]
            if scoring and (x[:, p0:] == cfg.mask_id).any():
                prune(gm & (x[:, p0:] == cfg.mask_id))
                rebuild = redvtp.get("pruned_cache", "compact") == "rebuild"
            i += 1
            step += 1
    return x[:, p0:], passes


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


@pytest.mark.parametrize("mode,pruned_cache,score_step,threshold", [
    ("prefix", "compact", 0, None), ("dual", "compact", 3, None), ("prefix", "rebuild", 9, None),
    ("dual", "rebuild", 0, None), ("none", "compact", 3, None), ("dual", "compact", 0, 0.1),
])
def test_redvtp_with_cache_matches_reference(model, mode, pruned_cache, score_step, threshold):
    """RedVTP (keep 6 of 16, re-indexed positions) scored at step 0, in the middle of block 0 (a full pass forced
    under caching) or in block 1, with every cache mode, both ways of treating the cache after pruning and
    parallel decoding: tokens, kept indices and forward passes equal the NumPy reference (batch 2 with padding,
    two blocks); the loop compiles once per prompt length."""
    from vtp_jax.pruning.redvtp import RedVTP

    ids, mask, pixels = prompts(2)
    cfg = DiffusionConfig(gen_length=16, block_length=8, steps=16, mask_id=MASK, cache=mode, threshold=threshold,
                          pruned_cache=pruned_cache)
    gen = DiffusionGenerator(model, cfg, RedVTP(keep=6, score_step=score_step))
    out = gen.generate_arrays(ids, mask, {"pixel_values": pixels})
    opts = dict(keep=6, step=score_step, pruned_cache=pruned_cache)
    ref, passes = reference_fast_dllm(model, ids.copy(), mask, pixels, cfg, mode, threshold, redvtp=opts)
    np.testing.assert_array_equal(out.tokens, ref)
    assert out.steps == passes
    assert out.kept.shape == (2, 6)
    if (mode, pruned_cache, score_step) == ("prefix", "compact", 0):  # the two cache treatments differ here
        other = reference_fast_dllm(model, ids.copy(), mask, pixels, cfg, mode, redvtp={**opts, "pruned_cache":
                                                                                        "rebuild"})[0]
        assert (other != ref).any()
    gen.generate_arrays(ids, mask, {"pixel_values": pixels[::-1].copy()}, seed=1)
    twice = 2 if score_step else 1  # the steps before the scoring step run on the unpruned prompt
    assert gen.compiled_counts() == {"encode": 1, "first_step": twice, "denoise": twice}


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


def test_bad_redvtp_cache_settings(model):
    """A scoring step beyond the schedule, a negative one, an unknown cache treatment: named errors."""
    from vtp_jax.pruning.core import PruningError
    from vtp_jax.pruning.redvtp import RedVTP

    cfg = DiffusionConfig(gen_length=8, block_length=4, steps=8, mask_id=MASK, cache="prefix")
    with pytest.raises(DiffusionError, match="score_step 8 must be below 8"):
        DiffusionGenerator(model, cfg, RedVTP(keep=6, score_step=8))
    with pytest.raises(DiffusionError, match=r"score_step 8 must be below 8, the most steps a threshold run"):
        DiffusionGenerator(model, dataclasses.replace(cfg, threshold=0.5, steps=2), RedVTP(keep=6, score_step=8))
    with pytest.raises(PruningError, match="score_step must be a whole number"):
        RedVTP(keep=6, score_step=-1).validate(16, 2)
    with pytest.raises(DiffusionError, match="pruned_cache must be one of compact, rebuild"):
        dataclasses.replace(cfg, pruned_cache="drop").validate()
