"""Pre-LLM pruning (ToDRE stage 1, DivPrune, random) for both families.

- Each selection equals a plain NumPy (float64) reference on fixed inputs.
- ToDRE's [CLS] pivot comes from transformers' eager CLIP attentions.
- LLaVA: pruned generation equals transformers' greedy decoding, without cache, of the prompt from which the dropped
  visual tokens were removed (original positions, or contiguous ones with ``reindex``); the KV cache holds the
  shorter prompt; no recompilation within a bucket.
- LLaDA-V: pruned sampling equals a plain LLaDA loop (full forward per step, no jit of the sampler) on the prompt
  without the dropped tokens; every step sees the shorter prompt.
- ``vtp-generate`` with ``--method divprune`` (LLaVA) and ``--method todre`` (LLaDA-V).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from PIL import Image

from tests.conftest import llava_inputs
from vtp_jax import cli
from vtp_jax.generation.autoregressive import AutoregressiveGenerator
from vtp_jax.generation.diffusion import DiffusionConfig, DiffusionGenerator
from vtp_jax.modeling.decoder import SequenceState
from vtp_jax.pruning import METHODS, PruningError, make_method
from vtp_jax.pruning.divprune import DivPrune, max_min_diversify, unit_rows
from vtp_jax.pruning.random_prune import RandomPrune
from vtp_jax.pruning.todre import ToDRE, max_sum_diversify

PAD = 3


# ---- NumPy references ------------------------------------------------------------------------------------------

def np_unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_max_sum(x, pivot: int, keep: int) -> np.ndarray:
    """ToDRE stage 1 (paper): S = X·x_p; S_p = ∞; keep − 1 times c = argmin S; S += X·x_c; S_c = ∞."""
    x = np_unit(x)
    s = x @ x[pivot]
    s[pivot] = np.inf
    chosen = [pivot]
    for _ in range(keep - 1):
        c = int(np.argmin(s))
        s = s + x @ x[c]
        s[c] = np.inf
        chosen.append(c)
    return np.sort(chosen)


def np_max_min(x, keep: int) -> np.ndarray:
    """DivPrune: D = 1 − cos; first = argmax of the nearest-neighbour distance; then farthest-point selection."""
    x = np_unit(x)
    d = 1.0 - x @ x.T
    off = d + np.diag(np.full(len(x), np.inf))
    chosen = [int(np.argmax(off.min(axis=1)))]
    for _ in range(keep - 1):
        dist = d[chosen].min(axis=0)
        dist[chosen] = -np.inf
        chosen.append(int(np.argmax(dist)))
    return np.sort(chosen)


def np_pivot(x, kind: str) -> int:
    x = np.asarray(x, np.float64)
    if kind == "norm":
        return int(np.argmax(np.linalg.norm(x, axis=-1)))
    if kind == "center":
        u = np_unit(x)
        return int(np.argmax(u @ u.mean(0)))
    return 0


# ---- selections on fixed inputs --------------------------------------------------------------------------------

FEATS = np.random.default_rng(0).standard_normal((2, 37, 12)).astype(np.float32)


@pytest.mark.parametrize("keep", [1, 2, 9, 37])
def test_todre_greedy_max_sum_matches_numpy(keep):
    cls = np.random.default_rng(1).random((2, 37)).astype(np.float32)  # a stand-in class-token attention row
    kept = np.asarray(ToDRE(keep=keep, pivot="cls").select(jnp.asarray(FEATS), jnp.asarray(cls)))
    assert kept.dtype == np.int32 and kept.shape == (2, keep)
    for b in range(2):
        np.testing.assert_array_equal(kept[b], np_max_sum(FEATS[b], int(np.argmax(cls[b])), keep))
    for pivot in ("norm", "center", "first"):
        kept = np.asarray(jax.jit(ToDRE(keep=keep, pivot=pivot).select)(jnp.asarray(FEATS)))
        for b in range(2):
            np.testing.assert_array_equal(kept[b], np_max_sum(FEATS[b], np_pivot(FEATS[b], pivot), keep))
    # no class-token row → "norm"; the diversification itself, with an explicit pivot
    np.testing.assert_array_equal(ToDRE(keep=keep).select(jnp.asarray(FEATS)),
                                  ToDRE(keep=keep, pivot="norm").select(jnp.asarray(FEATS)))
    mine = max_sum_diversify(unit_rows(jnp.asarray(FEATS)), jnp.array([5, 30]), keep)
    np.testing.assert_array_equal(mine[1], np_max_sum(FEATS[1], 30, keep))


@pytest.mark.parametrize("keep", [1, 4, 10, 37])
def test_divprune_max_min_matches_numpy(keep):
    kept = np.asarray(jax.jit(DivPrune(keep=keep).select)(jnp.asarray(FEATS.astype(jnp.bfloat16))))
    for b in range(2):
        ref = np_max_min(np.asarray(jnp.asarray(FEATS[b]).astype(jnp.bfloat16).astype(jnp.float32)), keep)
        np.testing.assert_array_equal(kept[b], ref)
    # repeated tokens (LLaDA-V's newline vector): still `keep` distinct indices
    x = np.concatenate([FEATS[:1, :6], np.repeat(FEATS[:1, 6:7], 8, axis=1)], axis=1)  # 6 distinct + 8 copies
    kept = np.asarray(max_min_diversify(unit_rows(jnp.asarray(x)), 10))[0]
    assert len(set(kept.tolist())) == 10 and (np.diff(kept) > 0).all()


def test_random_is_reproducible_per_seed():
    x = jnp.zeros((3, 50, 4))
    a = np.asarray(RandomPrune(keep=7, seed=11).select(x))
    b = np.asarray(jax.jit(RandomPrune(keep=7, seed=11).select)(x))
    c = np.asarray(RandomPrune(keep=7, seed=12).select(x))
    np.testing.assert_array_equal(a, b)  # same seed: same subsets, jitted or not
    assert not np.array_equal(a, c)  # another seed: other subsets
    assert len({tuple(r) for r in a.tolist()}) == 3  # rows differ
    assert all((np.diff(r) > 0).all() and 0 <= r[0] and r[-1] < 50 for r in a)
    np.testing.assert_array_equal(RandomPrune(keep=7, seed=11).select(x[:1])[0], a[0])  # batch-size independent
    # uniform: over many seeds each token is kept about keep/N of the time
    counts = np.bincount(np.concatenate([np.asarray(RandomPrune(keep=5, seed=s).select(jnp.zeros((1, 10, 1))))[0]
                                         for s in range(200)]), minlength=10)
    assert counts.min() > 60 and counts.max() < 140  # expected 100 each (σ ≈ 7)


def test_registry_and_validation():
    assert {METHODS[n].stage for n in ("todre", "divprune", "random")} == {"pre_llm"}
    assert make_method("random", keep=3, seed=4) == RandomPrune(keep=3, seed=4)
    for m in (ToDRE(keep=0), DivPrune(keep=17), RandomPrune(keep=0)):
        with pytest.raises(PruningError, match="keep must be between 1"):
            m.validate(16, 2)
    with pytest.raises(PruningError, match="pivot must be one of"):
        ToDRE(keep=2, pivot="middle").validate(16, 2)
    with pytest.raises(PruningError, match="does not take option"):
        make_method("divprune", keep=2, pivot="cls")


# ---- LLaVA -----------------------------------------------------------------------------------------------------

def left_pad(rows, lengths, bucket):
    ids = np.full((len(lengths), bucket), PAD, np.int64)
    mask = np.zeros((len(lengths), bucket), np.int64)
    for b, n in enumerate(lengths):
        ids[b, bucket - n:], mask[b, bucket - n:] = rows[b, :n], 1
    return ids, mask


def hf_features(hf_model, pixels) -> torch.Tensor:
    """Projector outputs of transformers' LLaVA, [N_v, D] for one image."""
    feats = hf_model.model.get_image_features(pixel_values=torch.tensor(pixels))
    feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
    return torch.cat(list(feats), 0) if isinstance(feats, (list, tuple)) else feats.reshape(-1, feats.shape[-1])


def hf_pruned_greedy(hf_model, ids_row, pixels_row, kept, new: int, reindex: bool) -> list[int]:
    """Greedy decoding of transformers' LLaVA (no cache: the whole sequence each step) on the merged embeddings
    minus the dropped visual tokens, with their original positions (or 0.. when ``reindex``)."""
    lm = hf_model.model.language_model
    image_id = hf_model.config.image_token_id
    vis = np.flatnonzero(ids_row == image_id)
    dropped = vis[np.setdiff1d(np.arange(len(vis)), kept)]
    keep_at = np.setdiff1d(np.arange(len(ids_row)), dropped)
    out = []
    with torch.no_grad():
        t = torch.tensor(ids_row)[None]
        emb = lm.embed_tokens(torch.where(t == image_id, 0, t))
        emb[t == image_id] = hf_features(hf_model, pixels_row[None]).to(emb.dtype)
        emb = emb[:, torch.tensor(keep_at)]
        pos = torch.arange(len(keep_at))[None] if reindex else torch.tensor(keep_at)[None]
        for _ in range(new):
            # an explicit mask: without one, transformers reads a position jump as a packed-sequence boundary
            h = lm(inputs_embeds=emb, position_ids=pos, attention_mask=torch.ones(pos.shape, dtype=torch.long),
                   use_cache=False).last_hidden_state
            tok = int(hf_model.lm_head(h[:, -1]).argmax(-1))
            out.append(tok)
            emb = torch.cat([emb, lm.embed_tokens(torch.tensor([[tok]]))], 1)
            pos = torch.cat([pos, pos[:, -1:] + 1], 1)
    return out


def hf_cls_attention(hf_model, pixels, layer: int) -> np.ndarray:
    """Head-mean class-token attention row over the patches at vision layer ``layer`` (1-based), eager attention."""
    hf_model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = hf_model.model.vision_tower(pixel_values=torch.tensor(pixels), output_attentions=True)
    finally:
        hf_model.set_attn_implementation("sdpa")
    return out.attentions[layer - 1][:, :, 0, 1:].mean(1).numpy()


NEW = 6


@pytest.fixture(scope="module")
def llava(converted_llava):
    return converted_llava()  # CLIP 2 layers (features: layer 1), 16 visual tokens, Llama 2 layers


def test_todre_cls_pivot_from_the_vision_tower(llava):
    c = llava
    _, pixels = llava_inputs(c.cfg, batch=2, seed=4)
    assert ToDRE(keep=3).cls_probe(c.cfg) == 1 and ToDRE(keep=3, cls_layer=-1).cls_probe(c.cfg) == 2
    for layer in (1, 2):
        feats, cls_attn = c.model.image_features_with_cls(jnp.asarray(pixels), cls_layer=layer)
        np.testing.assert_allclose(cls_attn, hf_cls_attention(c.hf_model, pixels, layer), atol=1e-5)
        np.testing.assert_array_equal(feats, c.model.image_features(jnp.asarray(pixels)))
    with pytest.raises(PruningError, match="cls_layer must be in"):
        ToDRE(keep=3, cls_layer=3).cls_probe(c.cfg)
    with pytest.raises(PruningError, match="only applies to the 'cls' pivot"):
        ToDRE(keep=3, pivot="norm", cls_layer=1).cls_probe(c.cfg)


@pytest.mark.parametrize("method", [ToDRE(keep=5), DivPrune(keep=4), RandomPrune(keep=6, seed=3, reindex=True)],
                         ids=["todre", "divprune", "random-reindex"])
def test_llava_generation_equals_unpruned_model_on_the_shortened_prompt(llava, method):
    c = llava
    n_v = c.cfg.num_visual_tokens
    rows, pixels = llava_inputs(c.cfg, batch=2, text_len=10, seed=5)
    lengths = [rows.shape[1], rows.shape[1] - 3]  # row 1 three text tokens shorter (left-padded further)
    ids, mask = left_pad(rows, lengths, 32)
    gen = AutoregressiveGenerator(c.model, method)
    out = gen.generate_arrays(ids, mask, pixels, max_new_tokens=NEW, pad_token_id=PAD)
    assert out.kept.shape == (2, method.keep) and not np.array_equal(out.kept[0], out.kept[1])
    # the selection is made on the projector outputs
    feats = np.asarray(c.model.image_features(jnp.asarray(pixels)))
    for b in range(2):
        if isinstance(method, ToDRE):
            pivot = int(np.argmax(hf_cls_attention(c.hf_model, pixels[b:b + 1], 1)[0]))
            np.testing.assert_array_equal(out.kept[b], np_max_sum(feats[b], pivot, method.keep))
        elif isinstance(method, DivPrune):
            np.testing.assert_array_equal(out.kept[b], np_max_min(feats[b], method.keep))
        ref = hf_pruned_greedy(c.hf_model, rows[b, :lengths[b]], pixels[b], out.kept[b], NEW, method.reindex)
        np.testing.assert_array_equal(out.tokens[b], ref)
    # the decoder and its KV cache hold the shorter prompt: T − N_v + keep slots, plus the decode room
    pre = gen.prefill(gen.state, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, bool), jnp.asarray(pixels, jnp.float32),
                      jax.random.key(0), jnp.float32(0.0), jnp.float32(1.0), max_new_tokens=NEW)
    assert pre.caches[0].k.shape[1] == 32 - n_v + method.keep + NEW
    np.testing.assert_array_equal(pre.kept, out.kept)
    # another prompt of the same bucket (other lengths, other images): no recompilation
    ids2, mask2 = left_pad(rows, [rows.shape[1] - 1, rows.shape[1] - 2], 32)
    gen.generate_arrays(ids2, mask2, pixels[::-1].copy(), max_new_tokens=NEW, pad_token_id=PAD, seed=1)
    assert gen.compiled_counts() == {"prefill": 1, "decode": 1}


# ---- LLaDA-V ---------------------------------------------------------------------------------------------------

SIZES = dict(image_size=32, patch_size=8, vision_hidden=32, vision_layers=2, vision_heads=4, vision_mlp=64,
             text_hidden=64, text_layers=2, text_heads=4, text_kv_heads=4, text_mlp=128, vocab_size=320,
             max_position_embeddings=200, max_grid=3, max_num_patches=4)
IMAGE_HW = (60, 90)  # an anyres grid with image_newline tokens (N_v = 76, from the layout)
GEN, BLOCK, STEPS = 8, 4, 4


@pytest.fixture(scope="module")
def llada_dir(tmp_path_factory):
    from convert import convert
    from vtp_jax.testbed import hf_llada_v

    root = tmp_path_factory.mktemp("pre_llm_llada")
    return convert(hf_llada_v.build_tiny_llada_v(str(root / "hf"), **SIZES), str(root / "jax"), progress=False)


@pytest.fixture(scope="module")
def llada(llada_dir):
    """The converted tiny LLaDA-V with O(0.3) weights added (the stored std 0.02 gives near-uniform logits)."""
    from vtp_jax import checkpoint

    model, cfg, _ = checkpoint.load(llada_dir)
    rng = np.random.default_rng(7)
    state = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda x: x + jnp.asarray(0.3 * rng.standard_normal(x.shape), x.dtype), state))
    return model


def llada_prompts(model, lengths_text, seed: int):
    """Left-padded ids/mask [2, 48 + N_v] with one image run per row, and random pixel tiles."""
    rng = np.random.default_rng(seed)
    n_v = model.num_visual_tokens(IMAGE_HW)
    img = model.cfg.image_token_id
    bucket = n_v + 48
    ids = np.full((2, bucket), 1, np.int32)
    mask = np.zeros((2, bucket), np.int32)
    for b, (head, tail) in enumerate(lengths_text):
        row = np.concatenate([[0], rng.integers(10, 300, head), np.full(n_v, img), rng.integers(10, 300, tail)])
        ids[b, bucket - len(row):], mask[b, bucket - len(row):] = row, 1
    tiles = model.layout(IMAGE_HW).num_tiles
    pixels = rng.standard_normal((2, tiles, 3, 32, 32)).astype(np.float32)
    return ids, mask, pixels


def llada_reference(model, h, positions, valid, cfg: DiffusionConfig) -> np.ndarray:
    """LLaDA's loop (greedy, low-confidence remasking) over the given prompt embeddings: every step one full
    bidirectional forward of [prompt, response]; response positions follow the prompt's last position."""
    b, p, _ = h.shape
    g = cfg.gen_length
    x = np.full((b, g), cfg.mask_id, np.int32)
    gen_pos = positions.max(axis=1, keepdims=True) + 1 + np.arange(g)[None]
    pos = jnp.asarray(np.concatenate([positions, gen_pos], 1), jnp.int32)
    kv = jnp.asarray(np.concatenate([valid, np.ones((b, g), bool)], 1))

    @jax.jit
    def logits_of(x):
        hh = jnp.concatenate([h, model.language_model.embed_tokens(x)], axis=1)
        return model.logits(model.language_model(SequenceState(hh, pos, kv)).h[:, p:])

    spb = cfg.steps_per_block
    for blk in range(cfg.num_blocks):
        lo, hi = blk * cfg.block_length, (blk + 1) * cfg.block_length
        n_masked = (x[:, lo:hi] == cfg.mask_id).sum(1)
        counts = np.array([[n // spb + (i < n % spb) for i in range(spb)] for n in n_masked])
        for i in range(spb):
            lg = np.asarray(logits_of(jnp.asarray(x)), np.float64)
            x0 = lg.argmax(-1)
            pr = np.exp(lg - lg.max(-1, keepdims=True))
            conf = np.take_along_axis(pr / pr.sum(-1, keepdims=True), x0[..., None], -1)[..., 0]
            conf[:, hi:] = -np.inf
            conf = np.where(x == cfg.mask_id, conf, -np.inf)
            for r in range(b):
                top = np.argsort(-conf[r], kind="stable")[: counts[r, i]]
                x[r, top] = x0[r, top]
    return x


@pytest.mark.parametrize("method", [ToDRE(keep=19), DivPrune(keep=11, reindex=True)], ids=["todre", "divprune"])
def test_llada_v_sampling_equals_unpruned_loop_on_the_shortened_prompt(llada, method):
    model = llada
    ids, mask, pixels = llada_prompts(model, [(5, 4), (2, 3)], seed=1)
    n_v = model.num_visual_tokens(IMAGE_HW)
    cfg = DiffusionConfig(gen_length=GEN, block_length=BLOCK, steps=STEPS, mask_id=model.cfg.mask_token_id)
    inputs = {"pixel_values": pixels, "image_size": IMAGE_HW}
    gen = DiffusionGenerator(model, cfg, method)
    assert method.cls_probe(model.cfg) is None  # SigLIP: no class token, ToDRE's pivot falls back to "norm"
    out = gen.generate_arrays(ids, mask, inputs)
    assert out.kept.shape == (2, method.keep) and not np.array_equal(out.kept[0], out.kept[1])
    # selection over the packed anyres sequence (newline tokens included), on the projector outputs
    visual = model.image_features(jnp.asarray(pixels), image_size=IMAGE_HW)
    feats = np.asarray(visual)
    for b in range(2):
        ref = (np_max_sum(feats[b], np_pivot(feats[b], "norm"), method.keep) if isinstance(method, ToDRE)
               else np_max_min(feats[b], method.keep))
        np.testing.assert_array_equal(out.kept[b], ref)
    # reference: the unpruned model's LLaDA loop on the merged prompt minus the dropped visual tokens
    h, vmask = model.embed(jnp.asarray(ids), visual)
    h, vmask = np.asarray(h), np.asarray(vmask)
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    rows = []
    for b in range(2):
        vis = np.flatnonzero(vmask[b])
        keep_at = np.setdiff1d(np.arange(ids.shape[1]), vis[np.setdiff1d(np.arange(n_v), out.kept[b])])
        rows.append(keep_at)
    rows = np.stack(rows)
    pos = np.take_along_axis(positions, rows, 1)
    valid = np.take_along_axis(mask.astype(bool), rows, 1)
    if method.reindex:
        pos = np.maximum(np.cumsum(valid, 1) - 1, 0)
    ref = llada_reference(model, jnp.asarray(np.take_along_axis(h, rows[..., None], 1)), pos, valid, cfg)
    np.testing.assert_array_equal(out.tokens, ref)
    assert len(np.unique(out.tokens)) > 2, "degenerate output; the comparison would prove little"
    # every denoising step runs on the shorter prompt; another prompt of the bucket does not recompile
    prompt = gen.encode(gen.state, jnp.asarray(ids, jnp.int32), jnp.asarray(mask),
                        {"pixel_values": jnp.asarray(pixels)}, static=(("image_size", IMAGE_HW),))
    assert prompt.h.shape[1] == ids.shape[1] - n_v + method.keep
    ids2, mask2, pixels2 = llada_prompts(model, [(3, 3), (7, 1)], seed=2)
    gen.generate_arrays(ids2, mask2, {"pixel_values": pixels2, "image_size": IMAGE_HW})
    assert gen.compiled_counts() == {"encode": 1, "first_step": 1, "denoise": 1}


def test_todre_cls_pivot_refused_without_a_class_token(llada):
    cfg = DiffusionConfig(gen_length=GEN, block_length=BLOCK, steps=STEPS, mask_id=llada.cfg.mask_token_id)
    with pytest.raises(PruningError, match="has none"):
        DiffusionGenerator(llada, cfg, ToDRE(keep=4, pivot="cls"))


# ---- vtp-generate ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, IMAGE_HW + (3,), dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    from convert import convert
    from vtp_jax.testbed.hf_llava import build_tiny_llava

    root = tmp_path_factory.mktemp("pre_llm_llava")
    hf = build_tiny_llava(str(root / "hf"), image_size=64, patch_size=16, vision_hidden=32, vision_layers=2,
                          vision_heads=4, vision_mlp=64, text_hidden=32, text_layers=2, text_heads=4, text_kv_heads=2,
                          text_mlp=64, vocab_size=300, max_position_embeddings=128)
    return convert(hf, str(root / "jax"), progress=False)


def _cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_divprune_on_llava_and_todre_on_llada_v(llava_dir, llada_dir, image, capsys):
    common = ["--image", image, "--prompt", "What is this?", "--json", "--warmup", "0"]
    code, out, err = _cli(capsys, "--model", llava_dir, *common, "--max-new-tokens", "3", "--method", "divprune",
                          "--keep-ratio", "0.25")
    assert code == 0, err
    r = json.loads(out)
    assert r["num_visual_tokens"] == 16 and r["method"] == "divprune"
    kept = r["kept_visual_indices"]
    assert len(kept) == 4 and kept == sorted(set(kept)) and 0 <= kept[0] and kept[-1] < 16

    llada_args = ["--model", llada_dir, *common, "--gen-length", "4", "--steps", "2"]
    code, out, err = _cli(capsys, *llada_args, "--method", "todre")
    assert code == 0, err
    r = json.loads(out)
    n_v = r["num_visual_tokens"]
    kept = r["kept_visual_indices"]
    # ToDRE's default keep ratio is 0.1 (runtime.default_keep_ratio); LLaDA-V floors
    assert len(kept) == max(1, int(n_v * 0.1)) and kept == sorted(set(kept)) and kept[-1] < n_v

    code, out, err = _cli(capsys, *llada_args, "--method", "todre", "--pivot", "cls")
    assert code == 2 and out == "" and "needs a vision tower with a class token" in err and "Traceback" not in err
