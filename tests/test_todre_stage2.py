"""ToDRE stage 2 (task relevance at layer ℓ, arXiv 2505.18757) against transformers' PyTorch LLaVA (fp32, greedy).

- the ratios α_t→v / α_v→t equal a NumPy computation from transformers' eager attention at layer ℓ;
- τ = 1 (always fires): generation equals a no-cache reference where layers ≥ ℓ see no visual token;
- τ = 0 (never fires): generation equals the unpruned generator;
- a batch where one row fires and the other does not: each row equals its own single-sample run;
- stage 1 + stage 2 (ToDRE keep, then drop at ℓ) equals the reference with both removals;
- compile counts: one head, at most two tails per bucket.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import PAD, left_pad, llava_inputs
from vtp_jax.generation.autoregressive import AutoregressiveGenerator
from vtp_jax.pruning import METHODS, PruningError
from vtp_jax.pruning.todre import ToDRE
from vtp_jax.pruning.todre_relevance import ToDRERelevance

LAYERS = 3
ELL = (7 * LAYERS) // 8  # = 2, the default ⌊7L/8⌋
NEW = 8


@pytest.fixture(scope="module")
def llava(converted_llava):
    return converted_llava(text_layers=LAYERS)


def eager_attention(hf_model, ids, pixels, layer: int) -> np.ndarray:
    """Head-mean attention map [T, T] of one row at ``layer`` from transformers' eager attention."""
    hf_model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = hf_model(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels), output_attentions=True)
    finally:
        hf_model.set_attn_implementation("sdpa")
    return out.attentions[layer][0].mean(0).numpy().astype(np.float64)


def numpy_ratios(a: np.ndarray, is_visual: np.ndarray) -> tuple[float, float]:
    vis = np.flatnonzero(is_visual)
    idx = np.arange(len(is_visual))
    s, v, t = idx < vis[0], is_visual, idx > vis[-1]
    allk = s | v | t
    t2v = a[np.ix_(t, v)].sum() / a[np.ix_(t, allk)].sum()
    v2t = a[np.ix_(v, t)].sum() / a[np.ix_(v, allk)].sum()
    return float(t2v), float(v2t)


def reference_generate(hf_model, ids, pixels, pre_dropped: set, layer: int, new: int) -> list[int]:
    """No-cache reference: layers < ``layer`` see every token but ``pre_dropped`` (sequence positions), layers ≥
    ``layer`` see no visual token; original positions, causality by original position."""
    lm = hf_model.model.language_model
    image_id = hf_model.config.image_token_id
    seq = list(ids[0])
    vis = set(np.flatnonzero(ids[0] == image_id).tolist())
    out = []
    with torch.no_grad():
        feats = hf_model.model.get_image_features(pixel_values=torch.tensor(pixels))
        feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
        feats = torch.cat(list(feats), 0) if isinstance(feats, (list, tuple)) else feats.reshape(-1, feats.shape[-1])
        for _ in range(new):
            t = torch.tensor([seq])
            emb = lm.embed_tokens(torch.where(t == image_id, 0, t))
            emb[t == image_id] = feats.to(emb.dtype)
            keep0 = torch.tensor([j for j in range(len(seq)) if j not in pre_dropped])
            h, pos = emb[:, keep0], keep0[None]
            for i, block in enumerate(lm.layers):
                if i == layer:
                    sel = torch.tensor([k for k, j in enumerate(pos[0].tolist()) if j not in vis])
                    h, pos = h[:, sel], pos[:, sel]
                causal = torch.where(pos[0][None, :] > pos[0][:, None], float("-inf"), 0.0)
                cos, sin = lm.rotary_emb(h, pos)
                h = block(h, attention_mask=causal[None, None], position_embeddings=(cos, sin), position_ids=pos)
                h = h[0] if isinstance(h, tuple) else h
            tok = int(hf_model.lm_head(lm.norm(h[:, -1])).argmax(-1))
            out.append(tok)
            seq.append(tok)
    return out


def _eager_reference(c, *args):
    c.hf_model.set_attn_implementation("eager")
    try:
        return reference_generate(c.hf_model, *args)
    finally:
        c.hf_model.set_attn_implementation("sdpa")


def test_registry_and_validation():
    assert METHODS["todre-relevance"].stage == "in_llm"
    assert ToDRERelevance().resolve_layer(32) == 28 and ToDRERelevance().resolve_layer(3) == 2
    with pytest.raises(PruningError, match="layer"):
        ToDRERelevance(layer=3).validate(16, 3)
    with pytest.raises(PruningError, match="tau"):
        ToDRERelevance(tau=1.5).validate(16, 3)


def test_ratios_match_eager_attention(llava):
    c = llava
    ids, pixels = llava_inputs(c.cfg, batch=2, text_len=10, seed=4)
    lengths = [ids.shape[1], ids.shape[1] - 4]  # row 1 shorter and left-padded in a bucket of 48
    our_ids, our_mask = left_pad(ids, lengths, 48)
    out = AutoregressiveGenerator(c.model, ToDRERelevance(tau=0.0)).generate_arrays(
        our_ids, our_mask, pixels, max_new_tokens=1, pad_token_id=PAD)
    st = out.stages["todre-relevance"]
    for b in range(2):
        row = ids[b:b + 1, :lengths[b]]
        a = eager_attention(c.hf_model, row, pixels[b:b + 1], ELL)
        t2v, v2t = numpy_ratios(a, row[0] == c.cfg.image_token_id)
        np.testing.assert_allclose(st["alpha_t2v"][b], t2v, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(st["alpha_v2t"][b], v2t, rtol=1e-4, atol=1e-6)
        assert 0.0 < t2v < 1.0 and v2t == 0.0  # causal mask: visual rows never see the text after the image
    assert not out.stage2_dropped.any()


def test_always_fires_equals_reference_without_visual_from_layer_ell(llava):
    c = llava
    ids, pixels = llava_inputs(c.cfg, batch=1, text_len=10, seed=2)
    gen = AutoregressiveGenerator(c.model, ToDRERelevance(tau=1.0))
    out = gen.generate_arrays(ids, np.ones_like(ids), pixels, max_new_tokens=NEW, pad_token_id=PAD)
    assert out.stage2_dropped.tolist() == [True]
    ref = _eager_reference(c, ids, pixels, set(), ELL, NEW)
    np.testing.assert_array_equal(out.tokens[0], ref)
    unpruned = AutoregressiveGenerator(c.model).generate_arrays(ids, np.ones_like(ids), pixels, max_new_tokens=NEW,
                                                         pad_token_id=PAD)
    assert not np.array_equal(unpruned.tokens[0], ref), "dropping changed nothing; the test would prove little"


def test_never_fires_equals_unpruned(llava):
    c = llava
    ids, pixels = llava_inputs(c.cfg, batch=2, text_len=10, seed=5)
    mask = np.ones_like(ids)
    out = AutoregressiveGenerator(c.model, ToDRERelevance(tau=0.0)).generate_arrays(
        ids, mask, pixels, max_new_tokens=NEW, pad_token_id=PAD)
    ref = AutoregressiveGenerator(c.model).generate_arrays(ids, mask, pixels, max_new_tokens=NEW, pad_token_id=PAD)
    assert out.stage2_dropped.tolist() == [False, False]
    np.testing.assert_array_equal(out.tokens, ref.tokens)


def test_mixed_batch_rows_equal_single_sample_runs_and_compile_counts(llava):
    c = llava
    ids, pixels = llava_inputs(c.cfg, batch=2, text_len=10, seed=6)
    lengths = [ids.shape[1], ids.shape[1] - 3]
    b_ids, b_mask = left_pad(ids, lengths, 48)
    probe = AutoregressiveGenerator(c.model, ToDRERelevance(tau=0.0)).generate_arrays(
        b_ids, b_mask, pixels, max_new_tokens=1, pad_token_id=PAD)
    alpha = probe.stages["todre-relevance"]["alpha_t2v"]
    assert abs(alpha[0] - alpha[1]) > 1e-4, alpha  # τ = their mean is far from float noise (~1e-6)
    tau = float(alpha.mean())  # exactly one row fires
    gen = AutoregressiveGenerator(c.model, ToDRERelevance(tau=tau))
    out = gen.generate_arrays(b_ids, b_mask, pixels, max_new_tokens=NEW, pad_token_id=PAD)
    assert out.stage2_dropped.tolist() == [bool(alpha[0] < tau), bool(alpha[1] < tau)]
    assert out.stage2_dropped.sum() == 1
    for b in range(2):
        s_ids, s_mask = left_pad(ids[b:b + 1], lengths[b:b + 1], 48)
        single = gen.generate_arrays(s_ids, s_mask, pixels[b:b + 1], max_new_tokens=NEW, pad_token_id=PAD)
        assert single.stage2_dropped[0] == out.stage2_dropped[b]
        np.testing.assert_array_equal(out.tokens[b], single.tokens[0])
    # batch 2: one head, one (masked, full-length) tail so far; batch 1 compiled its own.
    gen2 = AutoregressiveGenerator(c.model, ToDRERelevance(tau=tau))
    gen2.generate_arrays(b_ids, b_mask, pixels, max_new_tokens=NEW, pad_token_id=PAD)
    both = left_pad(ids, [lengths[0] - 2, lengths[1] - 1], 48)  # other prompts, same bucket
    gen2.generate_arrays(*both, pixels[::-1].copy(), max_new_tokens=NEW, pad_token_id=PAD)
    gen2.generate_arrays(b_ids, b_mask, np.stack([pixels[int(alpha[1] < tau)]] * 2), max_new_tokens=NEW, pad_token_id=PAD)
    counts = gen2.compiled_counts()
    assert counts["prefill_head"] == 1 and counts["prefill_tail"] <= 2 and counts["decode"] <= 2, counts
    assert counts["prefill"] == 0


def test_stage1_plus_stage2(llava):
    c = llava
    ids, pixels = llava_inputs(c.cfg, batch=1, text_len=10, seed=7)
    mask = np.ones_like(ids)
    stage1 = ToDRE(keep=5, pivot="norm")
    out = AutoregressiveGenerator(c.model, (stage1, ToDRERelevance(tau=1.0))).generate_arrays(
        ids, mask, pixels, max_new_tokens=NEW, pad_token_id=PAD)
    only1 = AutoregressiveGenerator(c.model, stage1).generate_arrays(ids, mask, pixels, max_new_tokens=NEW, pad_token_id=PAD)
    np.testing.assert_array_equal(out.stages["todre"], only1.kept)
    assert out.stage2_dropped.tolist() == [True]
    vis = np.flatnonzero(ids[0] == c.cfg.image_token_id)
    pre_dropped = set(np.delete(vis, out.stages["todre"][0]).tolist())
    ref = _eager_reference(c, ids, pixels, pre_dropped, ELL, NEW)
    np.testing.assert_array_equal(out.tokens[0], ref)
    never = AutoregressiveGenerator(c.model, (stage1, ToDRERelevance(tau=0.0))).generate_arrays(
        ids, mask, pixels, max_new_tokens=NEW, pad_token_id=PAD)
    np.testing.assert_array_equal(never.tokens, only1.tokens)
    with pytest.raises(ValueError, match="per stage"):
        AutoregressiveGenerator(c.model, (stage1, ToDRE(keep=3)))


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory):
    """(converted checkpoint dir, image path) for vtp-generate: the tiny LLaVA of tests/test_cli.py (3 layers)."""
    from PIL import Image

    from convert import convert
    from tests.conftest import CLI_SIZES as SIZES
    from vtp_jax.testbed.hf_llava import build_tiny_llava

    root = tmp_path_factory.mktemp("cli_todre2")
    out = convert(build_tiny_llava(str(root / "hf"), **SIZES), str(root / "jax"), progress=False)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(root / "img.png")
    return out, str(root / "img.png")


def test_cli_two_stage_json(cli_model, capsys):
    import json

    from tests.conftest import run_cli

    d, img = cli_model
    base = ["--model", d, "--image", img, "--prompt", "what is this?", "--max-new-tokens", "3", "--json",
            "--warmup", "0"]
    code, out, err = run_cli(capsys, *base, "--method", "todre+todre-relevance", "--keep", "4", "--tau", "1.0")
    assert code == 0, err
    r = json.loads(out)
    assert len(r["stages"]["todre"]) == 4 and r["stages"]["todre"] == sorted(r["stages"]["todre"])
    rel = r["stages"]["todre-relevance"]
    assert rel["dropped"] is True and rel["tau"] == 1.0 and rel["layer"] == 2 and 0 < rel["alpha_t2v"] < 1
    assert r["kept_visual_indices"] == []
    code, out, err = run_cli(capsys, *base, "--method", "todre+todre-relevance", "--keep", "4", "--tau", "0")
    r = json.loads(out)
    assert code == 0 and r["stages"]["todre-relevance"]["dropped"] is False
    assert r["kept_visual_indices"] == r["stages"]["todre"]
    for bad, needle in [(["--method", "todre-relevance", "--keep", "3"], "no --keep"),
                        (["--method", "todre-relevance+todre"], "stage order"),
                        (["--method", "fastv", "--tau", "0.2"], "tau")]:
        code, out, err = run_cli(capsys, *base, *bad)
        assert code == 2 and needle in err, err
