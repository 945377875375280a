"""Qwen2.5-VL (``qwen2_5_vl``) through the family registry, against transformers' ``Qwen2_5_VLForConditionalGeneration``
(tiny, RANDOM weights; fp32, matmul precision "highest").

One tiny model (vision: 4 blocks × 48, patch 4, windows of 2 × 2 merged units, full attention in blocks 1 and 3;
Qwen2 decoder 40 wide, head_dim 10, GQA 4 → 2, M-RoPE sections (1, 2, 2)) is written with the ``Qwen/Qwen2.5-VL-*``
hub names in several shards, converted with vtp-convert's engine and loaded. Checked, for two images of different
aspect ratios (40×90 and 100×50, so different grids, N_v and rope deltas):

* merged visual tokens (tower → merger) and full logits ≤ 1e-4 of transformers'; the M-RoPE positions equal
  ``get_rope_index``'s;
* greedy tokens of :class:`AutoregressiveGenerator` equal transformers' ``generate`` (batch 1, and a batch of the two
  images: padded visual spans);
* FastV's kept indices equal the top-k of transformers' eager attention at layer K − 1 (last prompt row, head mean);
* pruned generation (FastV in the LLM, DivPrune before it) equals a PyTorch no-cache reference built from
  transformers' own decoder layers that drops the same visual tokens and keeps every token's M-RoPE position;
* every method runs through ``vtp-generate --json`` in-process (FastV, ToDRE stage 1 (norm pivot) and 1 + 2, DivPrune,
  random, DyRate with a hand-set — not trained — rate predictor); in a batch of the two images each row equals its
  own single run;
* a second image of the same grid does not recompile; the transformers-5 ``save_pretrained`` and in-memory name
  schemes convert to the same parameters; a tied-embedding model converts (head filled from the embedding) and
  matches transformers;
* bad inputs exit 2 with a message: a video file, an image that cannot be resized within the pixel bounds, pixel
  bounds given to another family.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from vtp_jax.testbed import hf_qwen2_5_vl  # noqa: E402

ATOL = 1e-4
IMAGES = {"wide": (40, 90), "tall": (100, 50)}  # (height, width)
PROMPT = "What is in the picture?"
NEW = 6
KEEP = 12


class Ckpt:
    """The converted tiny model and what the tests share."""


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from PIL import Image

    from convert import convert
    from vtp_jax import checkpoint
    from vtp_jax.processing import load_processor

    root = tmp_path_factory.mktemp("qwen2_5_vl")
    c = Ckpt()
    c.root = root
    c.hf_dir, c.hf = hf_qwen2_5_vl.build_tiny_qwen2_5_vl(str(root / "hf"), names="hub", max_shard_bytes=60_000)
    c.hf.set_attn_implementation("eager")
    c.out = convert(c.hf_dir, str(root / "converted"), dtype="float32", progress=False)
    c.model, c.cfg, c.meta = checkpoint.load(c.out)
    c.processor = load_processor(c.out, c.cfg)
    rng = np.random.default_rng(0)
    c.images, c.paths, c.batches = {}, {}, {}
    for name, (h, w) in IMAGES.items():
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        c.images[name] = img
        c.paths[name] = str(root / f"{name}.png")
        img.save(c.paths[name])
        c.batches[name] = c.processor([img], [PROMPT])
    return c


def _flat_pixels(batch):
    """The batch's per-row padded patches → transformers' flat pixel_values [Σ t·h·w, C·T·p·p]."""
    px = batch.image_inputs["pixel_values"]
    rows = [px[b, : t * h * w] for b, (t, h, w) in enumerate(batch.image_inputs["grid_thw"])]
    return torch.from_numpy(np.concatenate(rows))


def _hf_inputs(ckpt, batch, *, padded=False):
    ids = batch.input_ids.astype(np.int64) if padded else np.asarray([batch.prompt_ids[0]])
    ids = torch.from_numpy(ids)
    out = dict(input_ids=ids, pixel_values=_flat_pixels(batch),
               image_grid_thw=torch.tensor(batch.image_inputs["grid_thw"]),
               mm_token_type_ids=(ids == ckpt.cfg.image_token_id).int())
    if padded:
        out["attention_mask"] = torch.from_numpy(batch.attention_mask.astype(np.int64))
    return out


def test_registry_config_and_names(ckpt):
    from vtp_jax import families

    fam = families.for_model_type("qwen2_5_vl")
    assert fam.name == "qwen2_5_vl" and fam.autoregressive and fam.model_class().__name__ == "Qwen25VL"
    assert fam.processor_options == ("min_pixels", "max_pixels")
    assert ckpt.cfg.family == "qwen2_5_vl" and ckpt.meta["random_weights"]
    text = ckpt.cfg.text
    assert (text.qkv_bias, text.attention_bias, text.rope.mrope_section) == (True, False, (1, 2, 2))
    assert (text.num_attention_heads, text.num_key_value_heads, text.head_dim) == (4, 2, 10)
    map_name, is_ignored = fam.tensor_names()
    assert map_name("visual.patch_embed.proj.weight") == ("visual.patch_embed.proj.kernel", "patch")
    assert map_name("model.visual.merger.mlp.2.bias") == ("visual.merger.mlp.2.bias", "none")
    assert map_name("model.layers.1.self_attn.q_proj.bias") == map_name(
        "model.language_model.layers.1.self_attn.q_proj.bias") == ("language_model.layers.1.self_attn.q_proj.bias",
                                                                   "none")
    assert map_name("model.layers.1.self_attn.o_proj.bias") is None  # Qwen2: no o_proj bias
    assert is_ignored("model.rotary_emb.inv_freq")
    for name, b in ckpt.batches.items():
        (t, h, w), = b.image_inputs["grid_thw"]
        assert b.num_visual_tokens == t * h * w // 4 == sum(i == ckpt.cfg.image_token_id for i in b.prompt_ids[0])
    assert ckpt.batches["wide"].num_visual_tokens != ckpt.batches["tall"].num_visual_tokens


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_visual_tokens_positions_and_logits_match_transformers(ckpt, image):
    import jax.numpy as jnp

    b = ckpt.batches[image]
    grid = b.image_inputs["grid_thw"]
    inputs = _hf_inputs(ckpt, b)
    with torch.no_grad():
        ref_feats = ckpt.hf.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output
        ref_logits = ckpt.hf(**inputs).logits.numpy()
        ref_pos, _ = ckpt.hf.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                                  inputs["image_grid_thw"])
    ref_feats = torch.cat(list(ref_feats), 0).numpy()
    ours = np.asarray(ckpt.model.image_features(b.image_inputs["pixel_values"], grid_thw=grid))[0]
    assert ours.shape == ref_feats.shape == (b.num_visual_tokens, ckpt.cfg.text.hidden_size)
    assert np.abs(ours - ref_feats).max() <= ATOL
    ids = jnp.asarray([b.prompt_ids[0]])
    pos = ckpt.model.positions(jnp.ones(ids.shape, bool), ids == ckpt.cfg.image_token_id, grid_thw=grid)
    np.testing.assert_array_equal(np.asarray(pos)[0].T, ref_pos[:, 0].numpy())
    (_, gh, gw), = grid
    assert int(pos.max()) == len(b.prompt_ids[0]) - 1 - b.num_visual_tokens + max(gh, gw) // 2  # rope-delta rule
    logits = np.asarray(ckpt.model(ids, b.image_inputs["pixel_values"], grid_thw=grid))
    assert np.abs(ref_logits).max() > 0.5  # not a comparison of near-zero tensors
    err = np.abs(logits - ref_logits).max()
    print(f"{image}: visual tokens max abs diff {np.abs(ours - ref_feats).max():.2e}, logits {err:.2e}")
    assert err <= ATOL


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_greedy_tokens_equal_transformers_generate(ckpt, image):
    from vtp_jax.generation.autoregressive import AutoregressiveGenerator

    b = ckpt.batches[image]
    pad = ckpt.processor.pad_token_id
    ours = AutoregressiveGenerator(ckpt.model).generate_arrays(b.input_ids, b.attention_mask, b.image_inputs,
                                                               max_new_tokens=NEW, pad_token_id=pad)
    with torch.no_grad():
        ref = ckpt.hf.generate(**_hf_inputs(ckpt, b), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                               pad_token_id=pad)[:, len(b.prompt_ids[0]):].numpy()
    np.testing.assert_array_equal(ours.tokens, ref)
    assert len(set(ref[0].tolist())) > 1, "degenerate reference output"


def _fastv_reference_kept(ckpt, b, layer):
    with torch.no_grad():
        att = ckpt.hf(**_hf_inputs(ckpt, b), output_attentions=True).attentions[layer - 1][0, :, -1].mean(0)
    vis = np.flatnonzero(np.asarray(b.prompt_ids[0]) == ckpt.cfg.image_token_id)
    return np.sort(np.argsort(-att.numpy()[vis], kind="stable")[:KEEP])


def test_fastv_kept_indices_equal_eager_attention(ckpt):
    from vtp_jax.generation.autoregressive import AutoregressiveGenerator
    from vtp_jax.pruning.fastv import FastV

    layer = 2
    gen = AutoregressiveGenerator(ckpt.model, FastV(keep=KEEP, layer=layer))
    for image, b in ckpt.batches.items():  # one generator, two grids (two N_v): each validated and compiled
        out = gen.generate_arrays(b.input_ids, b.attention_mask, b.image_inputs, max_new_tokens=2, pad_token_id=0)
        np.testing.assert_array_equal(out.kept[0], _fastv_reference_kept(ckpt, b, layer), err_msg=image)


def torch_pruned_greedy(ckpt, b, kept, *, from_layer: int, new: int) -> np.ndarray:
    """A PyTorch no-cache reference of pruned greedy decoding built from transformers' own modules: the prompt's
    embeddings (visual tokens scattered in) and ``get_rope_index`` positions [3, 1, T]; layers < ``from_layer`` run on
    the whole sequence, layers ≥ ``from_layer`` without the visual tokens outside ``kept`` (0: pruned before the
    LLM); every token keeps its own 3-D position; each new token takes ``max + 1`` on all three axes and the whole
    sequence is recomputed at every step. Returns the ``new`` greedy ids."""
    hf, lm = ckpt.hf, ckpt.hf.model.language_model
    inputs = _hf_inputs(ckpt, b)
    ids = inputs["input_ids"]
    with torch.no_grad():
        feats = torch.cat(list(hf.model.get_image_features(inputs["pixel_values"],
                                                           inputs["image_grid_thw"]).pooler_output))
        emb = lm.embed_tokens(ids)
        vis = ids[0] == ckpt.cfg.image_token_id
        emb[0, vis] = feats
        pos, _ = hf.model.get_rope_index(ids, inputs["mm_token_type_ids"], inputs["image_grid_thw"])
        keep = ~vis.clone()
        keep[torch.nonzero(vis)[:, 0][torch.as_tensor(np.array(kept))]] = True
        out = []
        for _ in range(new):
            h = emb
            for i, layer in enumerate(lm.layers):
                if i == from_layer:  # drop the visual tokens not kept (with their positions)
                    h, p = h[:, keep], pos[:, :, keep]
                else:
                    p = pos if i < from_layer else pos[:, :, keep]
                t = h.shape[1]
                mask = torch.full((t, t), float("-inf")).triu(1)[None, None]
                h = layer(h, attention_mask=mask, position_embeddings=lm.rotary_emb(h, p))
                if isinstance(h, tuple):
                    h = h[0]
            tok = int(hf.lm_head(lm.norm(h[:, -1])).argmax(-1))
            out.append(tok)
            emb = torch.cat([emb, lm.embed_tokens(torch.tensor([[tok]]))], 1)
            pos = torch.cat([pos, torch.full((3, 1, 1), int(pos.max()) + 1)], 2)
            keep = torch.cat([keep, torch.tensor([True])])
    return np.asarray(out)


@pytest.mark.parametrize("method", ["fastv", "divprune"])
def test_pruned_generation_equals_torch_reference_with_3d_positions(ckpt, method):
    from vtp_jax.generation.autoregressive import AutoregressiveGenerator
    from vtp_jax.pruning.divprune import DivPrune
    from vtp_jax.pruning.fastv import FastV

    b = ckpt.batches["wide"]
    m, from_layer = (FastV(keep=KEEP, layer=2), 2) if method == "fastv" else (DivPrune(keep=KEEP), 0)
    out = AutoregressiveGenerator(ckpt.model, m).generate_arrays(b.input_ids, b.attention_mask, b.image_inputs,
                                                                 max_new_tokens=NEW, pad_token_id=0)
    ref = torch_pruned_greedy(ckpt, b, out.kept[0], from_layer=from_layer, new=NEW)
    np.testing.assert_array_equal(out.tokens[0], ref)
    # the same tokens with renumbered 1-D positions are another computation: the 3-D positions matter here
    assert len(out.kept[0]) == KEEP and KEEP < b.num_visual_tokens


def _predictor(path, heads, layer=1, rates=4):
    """A hand-set DyRate predictor (not trained): the rate index rises with the response's attention share."""
    from vtp_jax.pruning import dyrate as dy

    w = np.zeros((heads * 4, rates), np.float32)
    for h in range(heads):
        w[h * 4 + dy.RESPONSE] = 20.0 * np.arange(rates) / heads
    bias = -0.5 * np.arange(rates, dtype=np.float32) ** 2
    dy.RatePredictor(w, bias, layer, {"note": "hand-set for tests, not trained"}).save(str(path))
    return str(path)


SPECS = {
    "fastv": ["--method", "fastv", "--keep", str(KEEP)],
    "todre": ["--method", "todre", "--keep", str(KEEP)],  # automatic pivot: "norm" (no class token)
    "todre+todre-relevance": ["--method", "todre+todre-relevance", "--keep", str(KEEP), "--tau", "0.5"],
    "divprune": ["--method", "divprune", "--keep-ratio", "0.25"],  # keep = round(N_v · 0.25) of THIS image
    "random": ["--method", "random", "--keep", str(KEEP), "--seed", "3"],
    "dyrate": ["--method", "dyrate"],
}


@pytest.mark.parametrize("spec", list(SPECS))
def test_every_method_runs_through_vtp_generate(ckpt, spec, capsys):
    from vtp_jax import cli

    argv = ["--model", ckpt.out, "--image", ckpt.paths["wide"], "--prompt", PROMPT, "--json", "--warmup", "0",
            "--max-new-tokens", "4", *SPECS[spec]]
    if spec == "dyrate":
        argv += ["--predictor", _predictor(ckpt.root / "dyrate.safetensors", ckpt.cfg.text.num_attention_heads)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    res = json.loads(capsys.readouterr().out)
    n_v = ckpt.batches["wide"].num_visual_tokens
    assert res["family"] == "qwen2_5_vl" and res["random_weights"] and res["num_visual_tokens"] == n_v
    assert 1 <= len(res["output_ids"]) <= 4
    kept = res["kept_visual_indices"]
    if spec == "dyrate":
        assert len(kept) == n_v and res["kept_per_token"][0] == n_v
        assert set(res["stages"]["dyrate"]) >= {"kept_per_token", "rate_per_token", "layer"}
    elif spec == "todre+todre-relevance":
        assert len(res["stages"]["todre"]) == KEEP
        assert set(res["stages"]["todre-relevance"]) >= {"dropped", "alpha_t2v", "alpha_v2t"}
        assert len(kept) in (0, KEEP)
    else:
        want = round(n_v * 0.25) if spec == "divprune" else KEEP
        assert len(kept) == want and kept == sorted(kept) and max(kept) < n_v


def _mixed(ckpt):
    return ckpt.processor([ckpt.images["wide"], ckpt.images["tall"]], [PROMPT, PROMPT])


def test_batch_of_two_images_greedy_equals_transformers(ckpt):
    """Two images of different aspect ratios (different grids, N_v and rope deltas) in one batch, left-padded, with
    padded visual spans, against transformers' own batched ``generate``; a second batch of the same grids (other
    pixels, other seed) does not recompile."""
    from vtp_jax.generation.autoregressive import AutoregressiveGenerator

    b = _mixed(ckpt)
    counts = [ckpt.batches[n].num_visual_tokens for n in ("wide", "tall")]
    assert b.num_visual_tokens == max(counts) and b.image_inputs["pixel_values"].ndim == 3
    pad = ckpt.processor.pad_token_id
    gen = AutoregressiveGenerator(ckpt.model)
    ours = gen.generate_arrays(b.input_ids, b.attention_mask, b.image_inputs, max_new_tokens=NEW, pad_token_id=pad)
    with torch.no_grad():
        ref = ckpt.hf.generate(**_hf_inputs(ckpt, b, padded=True), max_new_tokens=NEW, min_new_tokens=NEW,
                               do_sample=False, pad_token_id=pad)[:, b.input_ids.shape[1]:].numpy()
    np.testing.assert_array_equal(ours.tokens, ref)
    assert all(len(set(r.tolist())) > 1 for r in ref), "degenerate reference output"
    for row, n_v in enumerate(counts):
        np.testing.assert_array_equal(ours.kept[row][:n_v], np.arange(n_v))
        assert np.all(ours.kept[row][n_v:] == -1)
    other = np.ascontiguousarray(b.image_inputs["pixel_values"][:, :, ::-1])  # other pixels, same shapes
    gen.generate_arrays(b.input_ids, b.attention_mask, {**b.image_inputs, "pixel_values": other},
                        max_new_tokens=NEW, pad_token_id=pad, seed=1)
    assert gen.compiled_counts() == {"prefill": 1, "decode": 1}


def test_same_grid_does_not_recompile(ckpt):
    from PIL import Image

    from vtp_jax.generation.autoregressive import AutoregressiveGenerator
    from vtp_jax.pruning.fastv import FastV

    gen = AutoregressiveGenerator(ckpt.model, FastV(keep=KEEP, layer=2))
    rng = np.random.default_rng(5)
    grids = set()
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    bounds = dict(factor=8, min_pixels=hf_qwen2_5_vl.MIN_PIXELS, max_pixels=hf_qwen2_5_vl.MAX_PIXELS)
    target = smart_resize(*IMAGES["wide"], **bounds)
    other = next((h, w) for h in range(30, 60) for w in range(60, 120)
                 if (h, w) != IMAGES["wide"] and smart_resize(h, w, **bounds) == target)
    for h, w in [IMAGES["wide"], IMAGES["wide"], other]:  # another size that resizes to the same grid
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        b = ckpt.processor([img], ["Describe the picture."])
        grids.add(b.image_inputs["grid_thw"])
        gen.generate_arrays(b.input_ids, b.attention_mask, b.image_inputs, max_new_tokens=2, pad_token_id=0)
    assert len(grids) == 1 and gen.compiled_counts() == {"prefill": 1, "decode": 1}


MIXED_SPECS = ("fastv", "divprune", "random", "todre+fastv", "todre+dyrate")


@pytest.mark.parametrize("spec", MIXED_SPECS)
def test_batch_of_two_images_equals_the_single_runs(ckpt, spec):
    """Tokens, kept indices of every stage and DyRate's per-token log of each row equal its own single run
    (random: row b of an unpadded batch of that image, since its draw depends on the row)."""
    from vtp_jax import runtime
    from vtp_jax.generation.autoregressive import AutoregressiveGenerator

    options = {}
    if "dyrate" in spec:
        options["predictor"] = _predictor(ckpt.root / "dyrate_mixed.safetensors", ckpt.cfg.text.num_attention_heads)
    layers = ckpt.cfg.text.num_hidden_layers

    def run(batch):
        gen = AutoregressiveGenerator(ckpt.model, runtime.build_methods(spec, "qwen2_5_vl", batch.num_visual_tokens,
                                                                        layers, **options))
        return gen.generate_arrays(batch.input_ids, batch.attention_mask, batch.image_inputs, max_new_tokens=NEW,
                                   pad_token_id=0)

    out = run(_mixed(ckpt))
    for row, name in enumerate(("wide", "tall")):
        if spec == "random":
            alone, r = run(ckpt.processor([ckpt.images[name]] * 2, [PROMPT] * 2)), row
        else:
            alone, r = run(ckpt.batches[name]), 0
        np.testing.assert_array_equal(out.tokens[row], alone.tokens[r], err_msg=f"{spec} {name}")
        np.testing.assert_array_equal(out.kept[row][out.kept[row] >= 0], alone.kept[r], err_msg=f"{spec} {name}")
        for stage, value in out.stages.items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(value[row][value[row] >= 0], alone.stages[stage][r], err_msg=stage)
        if "dyrate" in spec:
            np.testing.assert_array_equal(out.kept_per_token[row], alone.kept_per_token[r])
            np.testing.assert_array_equal(out.rate_per_token[row], alone.rate_per_token[r])


def _params(model):
    from flax import nnx

    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def test_other_name_schemes_convert_to_the_same_parameters(ckpt):
    from convert import convert
    from vtp_jax import checkpoint

    ref = jax.tree.leaves(checkpoint.flatten(_params(ckpt.model)))
    for names in ("transformers", "memory"):
        d = hf_qwen2_5_vl.write_qwen2_5_vl(ckpt.hf, str(ckpt.root / f"hf_{names}"), names=names)
        model, cfg, _ = checkpoint.load(convert(d, str(ckpt.root / f"converted_{names}"), progress=False))
        assert cfg == ckpt.cfg
        for a, b in zip(ref, jax.tree.leaves(checkpoint.flatten(_params(model)))):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_tied_embeddings_convert_and_match_transformers(ckpt, tmp_path):
    """Qwen2.5-VL-3B ties the LM head to the token embedding: the hub files then hold no ``lm_head.weight``; the
    converter fills the head from the embedding."""
    from convert import convert
    from vtp_jax import checkpoint

    d, hf = hf_qwen2_5_vl.build_tiny_qwen2_5_vl(str(tmp_path / "hf"), names="hub", tie_word_embeddings=True, seed=1)
    model, cfg, _ = checkpoint.load(convert(d, str(tmp_path / "jax"), progress=False))
    assert cfg.text.tie_word_embeddings
    flat = checkpoint.flatten(_params(model))
    np.testing.assert_array_equal(np.asarray(flat["lm_head.kernel"]).T,
                                  np.asarray(flat["language_model.embed_tokens.embedding"]))
    b = ckpt.batches["tall"]
    with torch.no_grad():
        ref = hf(**_hf_inputs(ckpt, b)).logits.numpy()
    ours = np.asarray(model(np.asarray([b.prompt_ids[0]]), b.image_inputs["pixel_values"],
                            grid_thw=b.image_inputs["grid_thw"]))
    assert np.abs(ours - ref).max() <= ATOL


def test_bad_inputs_exit_2(ckpt, tmp_path, capsys):
    from PIL import Image

    from vtp_jax import cli

    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    strip = tmp_path / "strip.png"
    Image.fromarray(np.zeros((2, 600, 3), np.uint8)).save(strip)  # aspect ratio 300 > 200: cannot be resized
    base = ["--model", ckpt.out, "--prompt", PROMPT, "--max-new-tokens", "2", "--warmup", "0"]
    cases = [
        (["--image", str(video)], "video"),
        (["--image", str(strip)], "cannot be resized"),
        (["--image", ckpt.paths["wide"], "--min-pixels", "5000", "--max-pixels", "100"], "min"),
    ]
    for extra, message in cases:
        code = cli.main(base + extra)
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err, err


def test_pixel_bounds_change_the_grid_and_are_refused_elsewhere(ckpt):
    from vtp_jax.config import LlavaConfig
    from vtp_jax.processing import InputError, load_processor

    small = load_processor(ckpt.out, ckpt.cfg, max_pixels=24 * 24)
    b = small([ckpt.images["wide"]], [PROMPT])
    (t, h, w), = b.image_inputs["grid_thw"]
    assert h * w * 16 <= 24 * 24 and b.num_visual_tokens < ckpt.batches["wide"].num_visual_tokens
    llava_like = LlavaConfig(vision=None, text=None)  # only its family is read before the refusal
    with pytest.raises(InputError, match="--max-pixels apply to qwen2_5_vl checkpoints"):
        load_processor(ckpt.out, llava_like, max_pixels=1000)


def test_every_parameter_has_logical_axes(ckpt):
    from flax import nnx

    from vtp_jax import checkpoint
    from vtp_jax.modeling import axes

    names = axes.logical_axes(nnx.state(ckpt.model, nnx.Param))
    shapes = {k: v.shape for k, v in checkpoint.flatten(_params(ckpt.model)).items()}
    assert set(names) == set(shapes)
    unnamed = [k for k, v in names.items() if v is None or len(v) != len(shapes[k])]
    assert not unnamed, unnamed
    assert names["lm_head.kernel"] == ("embed", "vocab")
