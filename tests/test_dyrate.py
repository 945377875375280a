"""DyRate (arXiv 2501.14204): each piece against plain NumPy, generation against a PyTorch no-cache reference.

- slot groups / per-head group shares, rate choice (argmax, monotone), keep counts and the token drop equal NumPy
  re-implementations on fixed inputs;
- a predictor that always picks rate 0 reproduces the unpruned generator token for token;
- generation with a predictor whose choice changes during decoding equals a PyTorch (transformers' Llama blocks)
  no-cache loop that re-derives every decision from its own layer-ℓ attention and masks the dropped visual keys for
  the rows after each decision; the kept count per generated token matches too;
- batch 2 with left padding: each row equals its own single-sample run; the decode loop compiles once while the rate
  changes;
- predictor files: round trip, bad files and a wrong head count raise PruningError.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import PAD, left_pad, llava_inputs
from vtp_jax.generation.autoregressive import AutoregressiveGenerator
from vtp_jax.pruning import METHODS, PruningError
from vtp_jax.pruning import dyrate as dy
from vtp_jax.pruning.core import visual_positions
from vtp_jax.pruning.todre import ToDRE

LAYERS = 3
NEW = 8
K = 4
GAIN = 20.0


@pytest.fixture(scope="module")
def llava(converted_llava):
    return converted_llava(text_layers=LAYERS)


# ---- pieces vs NumPy ---------------------------------------------------------------------------------------------


def test_slot_groups_and_shares_match_numpy():
    valid = np.array([[0, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1]], bool)
    vis = np.array([[0, 0, 1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 0, 0, 0, 0]], bool)
    g = np.asarray(dy.slot_groups(valid, vis, 3))
    np.testing.assert_array_equal(g[0], [-1, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    np.testing.assert_array_equal(g[1], [0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3])
    np.testing.assert_array_equal(np.asarray(visual_positions(vis, 3)), [[2, 3, 4], [1, 2, 3]])

    rng = np.random.default_rng(0)
    probs = rng.random((2, 3, 11)).astype(np.float32)
    probs *= (g >= 0)[:, None, :]  # padding gets no attention
    probs /= probs.sum(-1, keepdims=True)
    got = np.asarray(dy.group_shares(probs, g))
    want = np.zeros((2, 3, 4))
    for b in range(2):
        for h in range(3):
            for s in range(11):
                if g[b, s] >= 0:
                    want[b, h, g[b, s]] += probs[b, h, s]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(dy.features(probs, g)), want.reshape(2, 12), rtol=1e-6)


def test_rates_keep_counts_and_choice():
    np.testing.assert_allclose(dy.rates(5), [0.0, 0.2, 0.4, 0.6, 0.8])
    np.testing.assert_array_equal(dy.keep_counts(576, 5), [576 - int(np.floor(576 * k / 5)) for k in range(5)])
    np.testing.assert_array_equal(dy.keep_counts(7, 4), [7, 6, 4, 2])  # 7 − ⌊7k/4⌋
    logits = np.array([[0.1, 2.0, 0.3], [5.0, 0.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    prev = np.array([0, 2, 1], np.int32)
    np.testing.assert_array_equal(np.asarray(dy.choose_rate(logits, prev)), [1, 2, 2])
    np.testing.assert_array_equal(np.asarray(dy.choose_rate(logits, prev, monotone=False)), [1, 0, 2])


def numpy_drop(scores, kept, target):
    out = np.zeros_like(kept)
    for b in range(len(kept)):
        cand = [j for j in np.argsort(-scores[b], kind="stable") if kept[b, j]]
        out[b, cand[: target[b]]] = True
    return out


def test_drop_visual_matches_numpy():
    rng = np.random.default_rng(1)
    for trial in range(20):
        scores = rng.random((3, 12)).astype(np.float32)
        scores[0, :4] = 0.5  # ties: the lower index wins
        kept = rng.random((3, 12)) < 0.7
        target = rng.integers(0, 13, size=3).astype(np.int32)
        got = np.asarray(dy.drop_visual(scores, kept, target))
        np.testing.assert_array_equal(got, numpy_drop(scores, kept, target))
        assert not (got & ~kept).any()
        np.testing.assert_array_equal(got.sum(1), np.minimum(target, kept.sum(1)))


def test_restrict_cache_valid():
    valid = np.ones((2, 6), bool)
    valid[1, 0] = False
    slots = np.array([[1, 2, 3], [2, 3, 4]], np.int32)
    kept = np.array([[1, 0, 1], [0, 1, 1]], bool)
    got = np.asarray(dy.restrict_cache_valid(valid, slots, kept))
    np.testing.assert_array_equal(got, [[1, 1, 0, 1, 1, 1], [0, 1, 0, 1, 1, 1]])


# ---- predictor files ---------------------------------------------------------------------------------------------


def save_predictor(path, weight, bias, layer):
    dy.RatePredictor(np.asarray(weight, np.float32), np.asarray(bias, np.float32), layer, {"note": "test"}).save(str(path))
    return str(path)


def test_predictor_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((16, K)), rng.standard_normal(K)
    p = dy.RatePredictor.load(save_predictor(tmp_path / "p.safetensors", w, b, 1))
    np.testing.assert_array_equal(p.weight, w.astype(np.float32))
    assert p.layer == 1 and p.num_rates == K and p.num_heads == 4 and p.meta == {"note": "test"}
    with pytest.raises(PruningError, match="not found"):
        dy.RatePredictor.load(str(tmp_path / "missing.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(PruningError, match="not a vtp-train-dyrate file"):
        dy.RatePredictor.load(str(tmp_path / "junk.safetensors"))
    with pytest.raises(PruningError, match="needs a trained predictor"):
        dy.DyRate().validate(16, 3)
    method = dy.DyRate(predictor=str(tmp_path / "p.safetensors"))
    with pytest.raises(PruningError, match="reads 4 heads; this decoder has 8"):
        method.validate(16, 3, 8)
    with pytest.raises(PruningError, match="probe layer"):
        dy.DyRate(predictor=str(tmp_path / "p.safetensors"), layer=3).validate(16, 3)
    assert METHODS["dyrate"].stage == "decode" and not METHODS["dyrate"].takes_keep


# ---- generation --------------------------------------------------------------------------------------------------


def rising_predictor(tmp_path, layer=1, heads=4, gain=GAIN):
    """A predictor whose rate index follows the mean response share m of attention: logits_k = gain·k·m − k²/2,
    argmax ≈ gain·m. Each generated token adds a response slot, so m grows and the rate climbs through several
    values within NEW tokens (checked by the tests)."""
    w = np.zeros((heads * 4, K), np.float32)
    for h in range(heads):
        w[h * 4 + dy.RESPONSE] = gain * np.arange(K) / heads
    b = -0.5 * np.arange(K, dtype=np.float32) ** 2
    return save_predictor(tmp_path / "rising.safetensors", w, b, layer)


def constant_predictor(tmp_path, k, heads=4):
    w = np.zeros((heads * 4, K), np.float32)
    b = np.zeros(K, np.float32)
    b[k] = 1.0
    return save_predictor(tmp_path / f"const{k}.safetensors", w, b, 1)


def torch_layer_probs(block, h, pos, mask, rotary):
    """Per-head softmax attention of the last row of ``block`` on input h [1, T, D] (float64 numpy [H, T])."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    attn = block.self_attn
    x = block.input_layernorm(h)
    t = x.shape[1]
    hd = attn.head_dim
    q = attn.q_proj(x).view(1, t, -1, hd).transpose(1, 2)
    k = attn.k_proj(x).view(1, t, -1, hd).transpose(1, 2)
    cos, sin = rotary(h, pos)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(rep, dim=1)
    logits = (q[:, :, -1:] @ k.transpose(-1, -2)) * hd**-0.5 + mask[-1:][None, None]
    return torch.softmax(logits.double(), -1)[0, :, 0].numpy()


def reference_dyrate(c, ids, pixels, predictor: dy.RatePredictor, new: int):
    """PyTorch no-cache DyRate: every step runs the whole sequence; row i sees the visual tokens kept when it was
    fed (prompt rows: all). Decisions from the last row's layer-ℓ attention (NumPy features, predictor, monotone
    argmax, NumPy drop). Returns (tokens, kept count per generated token)."""
    hf = c.hf_model
    lm = hf.model.language_model
    image_id = hf.config.image_token_id
    seq = list(ids[0])
    t0 = len(seq)
    vis = np.flatnonzero(ids[0] == image_id)
    n_v = len(vis)
    counts = dy.keep_counts(n_v, predictor.num_rates)
    kept = np.ones(n_v, bool)
    kept_rows = []  # for each response row (fed token), the kept set it saw
    rate = 0
    tokens, kept_log = [], []
    with torch.no_grad():
        feats = hf.model.get_image_features(pixel_values=torch.tensor(pixels))
        feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
        feats = torch.cat(list(feats), 0) if isinstance(feats, (list, tuple)) else feats.reshape(-1, feats.shape[-1])
        for step in range(new):
            kept_log.append(int(kept.sum()) if step > 0 else n_v)
            t = torch.tensor([seq])
            emb = lm.embed_tokens(torch.where(t == image_id, 0, t))
            emb[t == image_id] = feats.to(emb.dtype)
            n = len(seq)
            mask = torch.where(torch.arange(n)[None, :] > torch.arange(n)[:, None], float("-inf"), 0.0)
            for r, ks in enumerate(kept_rows):  # response row t0 + r saw only the kept visual tokens
                mask[t0 + r, vis[~ks]] = float("-inf")
            pos = torch.arange(n)[None]
            h = emb
            probs = None
            for i, block in enumerate(lm.layers):
                if i == predictor.layer:
                    probs = torch_layer_probs(block, h, pos, mask, lm.rotary_emb)
                cos, sin = lm.rotary_emb(h, pos)
                h = block(h, attention_mask=mask[None, None], position_embeddings=(cos, sin), position_ids=pos)
                h = h[0] if isinstance(h, tuple) else h
            tok = int(hf.lm_head(lm.norm(h[:, -1])).argmax(-1))
            tokens.append(tok)
            # the decision from this row's attention
            groups = np.where(np.isin(np.arange(n), vis), dy.IMAGE,
                              np.where(np.arange(n) < vis[0], dy.SYSTEM, dy.INSTRUCTION))
            groups[t0:] = dy.RESPONSE
            shares = np.stack([[probs[hh, groups == gg].sum() for gg in range(4)] for hh in range(probs.shape[0])])
            logits = shares.reshape(-1) @ predictor.weight.astype(np.float64) + predictor.bias
            rate = max(rate, int(np.argmax(logits)))
            score = probs.mean(0)[vis]
            kept = numpy_drop(score[None], kept[None], np.array([counts[rate]]))[0]
            kept_rows.append(kept.copy())
            seq.append(tok)
    return tokens, kept_log


def _eager(c):
    c.hf_model.set_attn_implementation("eager")
    return c


def test_rate_zero_equals_unpruned(llava, tmp_path):
    c = llava
    ids, pixels = llava_inputs(c.cfg, batch=2, text_len=10, seed=3)
    mask = np.ones_like(ids)
    gen = AutoregressiveGenerator(c.model, dy.DyRate(predictor=constant_predictor(tmp_path, 0)))
    out = gen.generate_arrays(ids, mask, pixels, max_new_tokens=NEW, pad_token_id=PAD)
    ref = AutoregressiveGenerator(c.model).generate_arrays(ids, mask, pixels, max_new_tokens=NEW, pad_token_id=PAD)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    assert (out.kept_per_token == c.cfg.num_visual_tokens).all() and out.decode_visual_kv_cut(16) == 0.0


def test_rising_rate_equals_torch_reference(llava, tmp_path):
    c = llava
    ids, pixels = llava_inputs(c.cfg, batch=1, text_len=10, seed=2)
    path = rising_predictor(tmp_path)
    gen = AutoregressiveGenerator(c.model, dy.DyRate(predictor=path))
    out = gen.generate_arrays(ids, np.ones_like(ids), pixels, max_new_tokens=NEW, pad_token_id=PAD)
    ref_tokens, ref_kept = reference_dyrate(c, ids, pixels, dy.RatePredictor.load(path), NEW)
    np.testing.assert_array_equal(out.tokens[0], ref_tokens)
    np.testing.assert_array_equal(out.kept_per_token[0], ref_kept)
    rates = out.rate_per_token[0]
    assert len(set(rates.tolist())) >= 3 and (np.diff(rates) >= 0).all(), rates  # the rate really rises
    unpruned = AutoregressiveGenerator(c.model).generate_arrays(ids, np.ones_like(ids), pixels, max_new_tokens=NEW,
                                                         pad_token_id=PAD)
    assert not np.array_equal(unpruned.tokens[0], ref_tokens), "dropping changed nothing; the test would prove little"
    assert out.stages["dyrate"]["kept_per_token"] is out.kept_per_token and 0 < out.decode_visual_kv_cut(16) < 1


def test_batch_rows_equal_single_runs_and_one_compile(llava, tmp_path):
    c = llava
    ids, pixels = llava_inputs(c.cfg, batch=2, text_len=10, seed=6)
    lengths = [ids.shape[1], ids.shape[1] - 3]
    b_ids, b_mask = left_pad(ids, lengths, 48)
    gen = AutoregressiveGenerator(c.model, dy.DyRate(predictor=rising_predictor(tmp_path)))
    out = gen.generate_arrays(b_ids, b_mask, pixels, max_new_tokens=NEW, pad_token_id=PAD)
    for b in range(2):
        s_ids, s_mask = left_pad(ids[b:b + 1], lengths[b:b + 1], 48)
        single = gen.generate_arrays(s_ids, s_mask, pixels[b:b + 1], max_new_tokens=NEW, pad_token_id=PAD)
        np.testing.assert_array_equal(out.tokens[b], single.tokens[0])
        np.testing.assert_array_equal(out.kept_per_token[b], single.kept_per_token[0])
    gen2 = AutoregressiveGenerator(c.model, dy.DyRate(predictor=rising_predictor(tmp_path)))
    for seed in (6, 7, 8):  # new prompts in the same bucket; the rate changes inside every decode loop
        i2, p2 = llava_inputs(c.cfg, batch=2, text_len=10, seed=seed)
        o = gen2.generate_arrays(*left_pad(i2, lengths, 48), p2, max_new_tokens=NEW, pad_token_id=PAD)
        assert len(set(o.rate_per_token[0].tolist())) >= 2
    assert gen2.compiled_counts() == {"prefill": 1, "decode": 1}


def test_with_pre_llm_stage_and_bad_combinations(llava, tmp_path):
    c = llava
    ids, pixels = llava_inputs(c.cfg, batch=1, text_len=10, seed=9)
    stage1 = ToDRE(keep=8, pivot="norm")
    gen = AutoregressiveGenerator(c.model, (stage1, dy.DyRate(predictor=rising_predictor(tmp_path))))
    out = gen.generate_arrays(ids, np.ones_like(ids), pixels, max_new_tokens=NEW, pad_token_id=PAD)
    assert out.kept_per_token[0, 0] == 8 and out.kept_per_token[0, -1] < 8
    from vtp_jax.pruning.fastv import FastV

    with pytest.raises(ValueError, match="pre-LLM method only"):
        AutoregressiveGenerator(c.model, (FastV(keep=4), dy.DyRate(predictor=rising_predictor(tmp_path))))
