"""Autoregressive generation and FastV against transformers' PyTorch LLaVA (fp32, greedy, token for token)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import PAD, left_pad, llava_inputs
from vtp_jax.generation.autoregressive import AutoregressiveGenerator
from vtp_jax.generation.sampling import top_p_filter
from vtp_jax.pruning.fastv import FastV

NEW = 16


def hf_greedy(hf_model, ids, mask, pixels, new=NEW) -> np.ndarray:
    with torch.no_grad():
        out = hf_model.generate(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), pixel_values=torch.tensor(pixels),
            max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=PAD,
        )
    return out[:, ids.shape[1]:].numpy()


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_greedy_matches_transformers_batch1_and_batch2(converted_llava, kv_heads):
    c = converted_llava(text_kv_heads=kv_heads, text_layers=3)
    ids, pixels = llava_inputs(c.cfg, batch=2, text_len=10)
    full = ids.shape[1]
    gen = AutoregressiveGenerator(c.model)
    # batch 1, no padding beyond the bucket's left padding
    ids1, mask1 = left_pad(ids[:1], [full], full)
    ours = gen.generate_arrays(ids1, mask1, pixels[:1], max_new_tokens=NEW, pad_token_id=PAD)
    ref = hf_greedy(c.hf_model, ids1, mask1, pixels[:1])
    np.testing.assert_array_equal(ours.tokens, ref)
    # batch 2, the second row shorter (left-padded); ours padded further to a bucket of 64
    lengths = [full, full - 5]  # row 1 loses its last five text tokens (its image run ends earlier)
    ids2 = ids
    ref_ids, ref_mask = left_pad(ids2, lengths, full)
    ref = hf_greedy(c.hf_model, ref_ids, ref_mask, pixels)
    our_ids, our_mask = left_pad(ids2, lengths, 64)
    ours = gen.generate_arrays(our_ids, our_mask, pixels, max_new_tokens=NEW, pad_token_id=PAD)
    np.testing.assert_array_equal(ours.tokens, ref)
    assert len(set(ref[0].tolist())) > 1, "degenerate reference output; the test would prove little"


def eager_attention_row(hf_model, ids, pixels, layer: int) -> np.ndarray:
    """Head-mean attention of the last prompt token at ``layer`` from transformers' eager attention [T]."""
    hf_model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = hf_model(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels), output_attentions=True)
    finally:
        hf_model.set_attn_implementation("sdpa")
    return out.attentions[layer][0, :, -1].mean(0).numpy()


@pytest.mark.parametrize("keep,layer", [(4, 2), (9, 1)])
def test_fastv_kept_indices_match_eager_attentions(converted_llava, keep, layer):
    c = converted_llava(text_layers=3)
    ids, pixels = llava_inputs(c.cfg, batch=2, text_len=10, seed=1)
    gen = AutoregressiveGenerator(c.model, FastV(keep=keep, layer=layer))
    mask = np.ones_like(ids)
    out = gen.generate_arrays(ids, mask, pixels, max_new_tokens=2, pad_token_id=PAD)
    for b in range(2):
        att = eager_attention_row(c.hf_model, ids[b:b + 1], pixels[b:b + 1], layer - 1)
        vis = np.flatnonzero(ids[b] == c.cfg.image_token_id)
        expected = np.sort(np.argsort(-att[vis], kind="stable")[:keep])
        np.testing.assert_array_equal(out.kept[b], expected)


def fastv_reference_generate(hf_model, ids, pixels, kept, layer: int, new: int) -> list[int]:
    """A plain no-cache reference: every step reruns the whole sequence; layers < K see every token, layers ≥ K
    see all but the pruned visual tokens (the kept set fixed at prefill), with their original positions."""
    lm = hf_model.model.language_model
    image_id = hf_model.config.image_token_id
    seq = list(ids[0])
    vis = np.flatnonzero(ids[0] == image_id)
    dropped = set(vis[np.setdiff1d(np.arange(len(vis)), kept)].tolist())
    out = []
    with torch.no_grad():
        feats = hf_model.model.get_image_features(pixel_values=torch.tensor(pixels))
        feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
        feats = torch.cat(list(feats), 0) if isinstance(feats, (list, tuple)) else feats.reshape(-1, feats.shape[-1])
        for _ in range(new):
            t = torch.tensor([seq])
            emb = lm.embed_tokens(torch.where(t == image_id, 0, t))
            emb[t == image_id] = feats.to(emb.dtype)
            pos = torch.arange(len(seq))[None]
            h = emb
            for i, block in enumerate(lm.layers):
                if i == layer:
                    keep_idx = torch.tensor([j for j in range(len(seq)) if j not in dropped])
                    h, pos = h[:, keep_idx], pos[:, keep_idx]
                n = h.shape[1]
                causal = torch.full((n, n), float("-inf")).triu(1)
                if i >= layer:  # causality by original position among the kept tokens
                    causal = torch.where(pos[0][None, :] > pos[0][:, None], float("-inf"), 0.0)
                cos, sin = lm.rotary_emb(h, pos)
                h = block(h, attention_mask=causal[None, None], position_embeddings=(cos, sin), position_ids=pos)
                h = h[0] if isinstance(h, tuple) else h
            logits = hf_model.lm_head(lm.norm(h[:, -1]))
            tok = int(logits.argmax(-1))
            out.append(tok)
            seq.append(tok)
    return out


def test_fastv_generation_equals_plain_reference(converted_llava):
    c = converted_llava(text_layers=3)
    ids, pixels = llava_inputs(c.cfg, batch=1, text_len=10, seed=2)
    gen = AutoregressiveGenerator(c.model, FastV(keep=5, layer=2))
    out = gen.generate_arrays(ids, np.ones_like(ids), pixels, max_new_tokens=8, pad_token_id=PAD)
    c.hf_model.set_attn_implementation("eager")
    try:
        ref = fastv_reference_generate(c.hf_model, ids, pixels, out.kept[0], layer=2, new=8)
    finally:
        c.hf_model.set_attn_implementation("sdpa")
    np.testing.assert_array_equal(out.tokens[0], ref)
    unpruned = AutoregressiveGenerator(c.model).generate_arrays(ids, np.ones_like(ids), pixels, max_new_tokens=8, pad_token_id=PAD)
    assert out.kept.shape == (1, 5)
    assert unpruned.kept.shape == (1, c.cfg.num_visual_tokens)


def test_no_recompilation_within_a_bucket(converted_llava):
    c = converted_llava(text_layers=3)
    ids, pixels = llava_inputs(c.cfg, batch=2, text_len=10, seed=3)
    gen = AutoregressiveGenerator(c.model, FastV(keep=4, layer=1))
    a_ids, a_mask = left_pad(ids, [ids.shape[1]] * 2, 64)
    b_ids, b_mask = left_pad(ids, [ids.shape[1] - 3] * 2, 64)  # three text tokens shorter, same bucket
    gen.generate_arrays(a_ids, a_mask, pixels, max_new_tokens=6, pad_token_id=PAD)
    assert gen.compiled_counts() == {"prefill": 1, "decode": 1}
    gen.generate_arrays(b_ids, b_mask, pixels[::-1].copy(), max_new_tokens=6, pad_token_id=PAD)
    gen.generate_arrays(a_ids, a_mask, pixels, max_new_tokens=6, pad_token_id=PAD, temperature=0.7, top_p=0.9, seed=5)
    assert gen.compiled_counts() == {"prefill": 1, "decode": 1}
    gen.generate_arrays(a_ids, a_mask, pixels, max_new_tokens=7, pad_token_id=PAD)  # a new static length compiles once
    assert gen.compiled_counts() == {"prefill": 2, "decode": 2}




def test_top_p_filter_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 50)).astype(np.float32) * 3
    for p in (0.05, 0.5, 0.9, 1.0):
        ours = np.asarray(top_p_filter(logits, np.float32(p)))
        for b in range(3):
            order = np.argsort(-logits[b])
            probs = np.exp(logits[b][order] - logits[b].max())
            probs /= probs.sum()
            before = np.cumsum(probs) - probs
            keep = set(order[before < p].tolist()) | {int(order[0])}
            np.testing.assert_array_equal(np.isfinite(ours[b]), np.isin(np.arange(50), sorted(keep)))
