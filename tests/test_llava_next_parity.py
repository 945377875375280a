"""LLaVA-NeXT (``llava_next``) through the family registry, against transformers' ``LlavaNextForConditionalGeneration``
(tiny, RANDOM weights; fp32, matmul precision "highest").

One tiny model (CLIP 32 px / patch 8 tiles, 5 grid pinpoints; Llama 40 wide, head_dim 10, GQA 4 → 2) is written with
the ``llava-hf/llava-v1.6-*`` hub names in 9 shards, converted with vtp-convert's engine and loaded. Checked, for two
images of different aspect ratios (40×90: a 1×3 grid; 100×50: a 2×1 grid), each alone in its batch:

* image features (tower → projector → unpad → ``image_newline``) and full logits ≤ 1e-4 of transformers';
* greedy tokens of :class:`AutoregressiveGenerator` equal transformers' ``generate`` (batch 1);
* FastV's kept indices equal the top-k of transformers' eager attention at layer K − 1;
* every LLaVA method runs through ``vtp-generate --json`` in-process (FastV, ToDRE stage 1 and 1 + 2, DivPrune,
  random, DyRate with a hand-set — not trained — rate predictor);
* the transformers-5 ``save_pretrained`` and in-memory name schemes convert to the same parameters.

* a batch of the two images (different layouts, different N_v): greedy tokens equal transformers' batched
  ``generate``, and for every method each row equals its own single run (tokens, kept indices, DyRate's log).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from vtp_jax.testbed import hf_llava_next  # noqa: E402

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

    root = tmp_path_factory.mktemp("llava_next")
    c = Ckpt()
    c.root = root
    c.hf_dir, c.hf = hf_llava_next.build_tiny_llava_next(str(root / "hf"), names="hub", max_shard_bytes=40_000)
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


def _hf_inputs(batch):
    ids = torch.tensor([batch.prompt_ids[0]])
    return dict(input_ids=ids, pixel_values=torch.from_numpy(batch.image_inputs["pixel_values"]),
                image_sizes=torch.tensor([batch.image_inputs["image_size"]]))


def test_registry_config_and_names(ckpt):
    from vtp_jax import families

    fam = families.for_model_type("llava_next")
    assert fam.name == "llava_next" and fam.autoregressive and fam.model_class().__name__ == "LlavaNext"
    assert ckpt.cfg.family == "llava_next" and ckpt.meta["random_weights"]
    assert ckpt.cfg.image_grid_pinpoints == ((32, 64), (64, 32), (64, 64), (96, 32), (32, 96))
    assert ckpt.cfg.num_visual_tokens == 16 + 8 * 9  # upper bound: the 64×64 pinpoint without unpadding
    map_name, _ = fam.tensor_names()
    for name in ("image_newline", "model.image_newline"):
        assert map_name(name) == ("image_newline", "none")
    assert map_name("language_model.model.layers.2.self_attn.k_proj.weight") == (
        "language_model.layers.2.self_attn.k_proj.kernel", "linear")
    assert map_name("vision_tower.vision_model.encoder.layers.1.mlp.fc2.weight") == (
        "vision_tower.layers.1.mlp.fc2.kernel", "linear")
    # the two layouts and their token counts (base 16 + rows · (cols + 1), unpadded)
    layouts = {n: ckpt.model.layout(hw) for n, hw in IMAGES.items()}
    assert layouts["wide"].grid == (1, 3) and layouts["tall"].grid == (2, 1)
    for n, b in ckpt.batches.items():
        assert b.num_visual_tokens == layouts[n].num_tokens == sum(i == 4 for i in b.prompt_ids[0])
        assert b.image_inputs["grid"] == layouts[n].grid and b.image_inputs["image_size"] == IMAGES[n]


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_image_features_and_logits_match_transformers(ckpt, image):
    b = ckpt.batches[image]
    kw = {k: v for k, v in b.image_inputs.items() if k != "pixel_values"}
    px = b.image_inputs["pixel_values"]
    with torch.no_grad():
        ref_feats = ckpt.hf.model.get_image_features(**{k: v for k, v in _hf_inputs(b).items() if k != "input_ids"})
        ref_logits = ckpt.hf(**_hf_inputs(b)).logits.numpy()
    ref_feats = torch.cat(list(ref_feats.pooler_output), 0).numpy()
    ours = np.asarray(ckpt.model.image_features(px, **kw))[0]
    assert ours.shape == ref_feats.shape == (b.num_visual_tokens, ckpt.cfg.text.hidden_size)
    assert np.abs(ours - ref_feats).max() <= ATOL
    logits = np.asarray(ckpt.model(np.asarray([b.prompt_ids[0]]), px, **kw))
    assert np.abs(ref_logits).max() > 0.5  # not a comparison of near-zero tensors
    err = np.abs(logits - ref_logits).max()
    print(f"{image}: features max abs diff {np.abs(ours - ref_feats).max():.2e}, logits {err:.2e}")
    assert err <= ATOL


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_greedy_tokens_equal_transformers_generate(ckpt, image):
    from vtp_jax.generation.autoregressive import AutoregressiveGenerator

    b = ckpt.batches[image]
    pad = ckpt.processor.pad_token_id
    ours = AutoregressiveGenerator(ckpt.model).generate_arrays(b.input_ids, b.attention_mask, b.image_inputs,
                                                        max_new_tokens=NEW, pad_token_id=pad)
    with torch.no_grad():
        ref = ckpt.hf.generate(**_hf_inputs(b), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                               pad_token_id=pad)[:, len(b.prompt_ids[0]):].numpy()
    np.testing.assert_array_equal(ours.tokens, ref)
    assert len(set(ref[0].tolist())) > 1, "degenerate reference output"


def test_fastv_kept_indices_equal_eager_attention(ckpt):
    from vtp_jax.generation.autoregressive import AutoregressiveGenerator
    from vtp_jax.pruning.fastv import FastV

    layer = 2
    gen = AutoregressiveGenerator(ckpt.model, FastV(keep=KEEP, layer=layer))
    for image, b in ckpt.batches.items():  # one generator, two layouts (two N_v): each validated and compiled
        out = gen.generate_arrays(b.input_ids, b.attention_mask, b.image_inputs, max_new_tokens=2, pad_token_id=0)
        ckpt.hf.set_attn_implementation("eager")
        try:
            with torch.no_grad():
                att = ckpt.hf(**_hf_inputs(b), output_attentions=True).attentions[layer - 1][0, :, -1].mean(0)
        finally:
            ckpt.hf.set_attn_implementation("sdpa")
        vis = np.flatnonzero(np.asarray(b.prompt_ids[0]) == ckpt.cfg.image_token_id)
        expected = np.sort(np.argsort(-att.numpy()[vis], kind="stable")[:KEEP])
        np.testing.assert_array_equal(out.kept[0], expected, err_msg=image)


def _predictor(path, heads, layer=1, rates=4):
    """A hand-set DyRate predictor (not trained): the rate index rises with the response's attention share."""
    from vtp_jax.pruning import dyrate as dy

    w = np.zeros((heads * 4, rates), np.float32)
    for h in range(heads):
        w[h * 4 + dy.RESPONSE] = 20.0 * np.arange(rates) / heads
    b = -0.5 * np.arange(rates, dtype=np.float32) ** 2
    dy.RatePredictor(w, b, layer, {"note": "hand-set for tests, not trained"}).save(str(path))
    return str(path)


SPECS = {  # FastV with --keep and ToDRE stage 1 alone take the same paths as fastv-ratio / todre+todre-relevance
    "todre+todre-relevance": ["--method", "todre+todre-relevance", "--keep", str(KEEP), "--tau", "0.5"],
    "divprune": ["--method", "divprune", "--keep", str(KEEP)],
    "random": ["--method", "random", "--keep", str(KEEP), "--seed", "3"],
    "fastv-ratio": ["--method", "fastv", "--keep-ratio", "0.25"],  # keep = round(N_v · 0.25) of THIS image's N_v
    "dyrate": ["--method", "dyrate"],
}


@pytest.mark.parametrize("spec", list(SPECS))
def test_every_llava_method_runs_through_vtp_generate(ckpt, spec, capsys):
    from vtp_jax import cli

    argv = ["--model", ckpt.out, "--image", ckpt.paths["wide"], "--prompt", PROMPT, "--json", "--warmup", "0",
            "--max-new-tokens", "4", *SPECS[spec]]
    if spec == "dyrate":
        argv += ["--predictor", _predictor(ckpt.root / "dyrate.safetensors", ckpt.cfg.text.num_attention_heads)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    res = json.loads(capsys.readouterr().out)
    n_v = ckpt.batches["wide"].num_visual_tokens
    assert res["family"] == "llava_next" and res["random_weights"] and res["num_visual_tokens"] == n_v
    assert 1 <= len(res["output_ids"]) <= 4
    kept = res["kept_visual_indices"]
    if spec == "dyrate":
        assert len(kept) == n_v and res["kept_per_token"][0] == n_v
        assert set(res["stages"]["dyrate"]) >= {"kept_per_token", "rate_per_token", "layer"}
    elif spec == "todre+todre-relevance":
        assert res["stages"]["todre"] and len(res["stages"]["todre"]) == KEEP
        assert set(res["stages"]["todre-relevance"]) >= {"dropped", "alpha_t2v", "alpha_v2t"}
        assert len(kept) in (0, KEEP)
    else:
        want = round(n_v * 0.25) if spec == "fastv-ratio" else KEEP
        assert len(kept) == want and kept == sorted(kept) and max(kept) < n_v


def test_other_name_schemes_convert_to_the_same_parameters(ckpt):
    from convert import convert
    from vtp_jax import checkpoint

    ref = jax.tree.leaves(checkpoint.flatten(_params(ckpt.model)))
    for names in ("transformers", "memory"):
        d = hf_llava_next.write_llava_next(ckpt.hf, str(ckpt.root / f"hf_{names}"), names=names)
        model, cfg, _ = checkpoint.load(convert(d, str(ckpt.root / f"converted_{names}"), progress=False))
        assert cfg == ckpt.cfg
        for a, b in zip(ref, jax.tree.leaves(checkpoint.flatten(_params(model)))):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _params(model):
    from flax import nnx

    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _mixed(ckpt):
    return ckpt.processor([ckpt.images["wide"], ckpt.images["tall"]], [PROMPT, PROMPT])


def test_batch_of_two_layouts_greedy_equals_transformers(ckpt):
    """Two images of different aspect ratios (different grids and N_v) in one batch: padded visual spans
    (:mod:`vtp_jax.generation.visual_spans`) against transformers' own batched ``generate``."""
    from vtp_jax.generation.autoregressive import AutoregressiveGenerator

    b = _mixed(ckpt)
    counts = [ckpt.batches[n].num_visual_tokens for n in ("wide", "tall")]
    assert counts[0] != counts[1] and b.num_visual_tokens == max(counts)
    assert b.image_inputs["image_size"] == (IMAGES["wide"], IMAGES["tall"])
    pad = ckpt.processor.pad_token_id
    gen = AutoregressiveGenerator(ckpt.model)
    ours = gen.generate_arrays(b.input_ids, b.attention_mask, b.image_inputs, max_new_tokens=NEW, pad_token_id=pad)
    with torch.no_grad():
        ref = ckpt.hf.generate(
            input_ids=torch.from_numpy(b.input_ids.astype(np.int64)),
            attention_mask=torch.from_numpy(b.attention_mask.astype(np.int64)),
            pixel_values=torch.from_numpy(b.image_inputs["pixel_values"]),
            image_sizes=torch.tensor(b.image_inputs["image_size"]), max_new_tokens=NEW, min_new_tokens=NEW,
            do_sample=False, pad_token_id=pad)[:, b.input_ids.shape[1]:].numpy()
    np.testing.assert_array_equal(ours.tokens, ref)
    assert all(len(set(r.tolist())) > 1 for r in ref), "degenerate reference output"
    for row, n_v in enumerate(counts):  # unpruned: each row's own visual tokens, then −1
        np.testing.assert_array_equal(ours.kept[row][: n_v], np.arange(n_v))
        assert np.all(ours.kept[row][n_v:] == -1)
    # another batch of the same two layouts reuses the compiled programs
    gen.generate_arrays(b.input_ids, b.attention_mask, b.image_inputs, max_new_tokens=NEW, pad_token_id=pad, seed=1)
    assert gen.compiled_counts() == {"prefill": 1, "decode": 1}


MIXED_SPECS = {  # every LLaVA method with its default keep ratio (each row keeps its share of its own N_v); ToDRE
    # stage 1 and DyRate run inside the combinations (their own padded buckets feed the next stage)
    "fastv": {}, "divprune": {}, "random": {}, "todre+fastv": {}, "todre+dyrate": {},
    "todre+todre-relevance": {"tau": None},  # tau set below: exactly one row fires
}


@pytest.mark.parametrize("spec", list(MIXED_SPECS))
def test_batch_of_two_layouts_equals_the_single_runs(ckpt, spec):
    """Tokens, kept indices of every stage and DyRate's per-token log of each row equal its own single run
    (random: row b of an unpadded batch of that image, since its draw depends on the row)."""
    from vtp_jax import runtime
    from vtp_jax.generation.autoregressive import AutoregressiveGenerator

    options = dict(MIXED_SPECS[spec])
    if "dyrate" in spec:
        options["predictor"] = _predictor(ckpt.root / "dyrate_mixed.safetensors", ckpt.cfg.text.num_attention_heads)
    layers = ckpt.cfg.text.num_hidden_layers
    mixed = _mixed(ckpt)
    if "tau" in options:  # ToDRE stage 2: a threshold between the two rows' ratios, so the batch is mixed
        probe = AutoregressiveGenerator(ckpt.model, runtime.build_methods(spec, "llava_next", mixed.num_visual_tokens,
                                                                          layers, tau=1.0))
        st = probe.generate_arrays(mixed.input_ids, mixed.attention_mask, mixed.image_inputs, max_new_tokens=1,
                            pad_token_id=0).stages["todre-relevance"]
        worst = np.maximum(st["alpha_t2v"], st["alpha_v2t"])
        options["tau"] = float(worst.mean())
        assert worst[0] != worst[1]

    def run(batch, rows=None):
        gen = AutoregressiveGenerator(ckpt.model, runtime.build_methods(spec, "llava_next", batch.num_visual_tokens,
                                                                        layers, **options))
        return gen.generate_arrays(batch.input_ids, batch.attention_mask, batch.image_inputs, max_new_tokens=NEW,
                            pad_token_id=0)

    out = run(mixed)
    if "tau" in options:
        assert out.stage2_dropped.tolist() in ([True, False], [False, True])
    for row, name in enumerate(("wide", "tall")):
        if spec == "random":
            alone, r = run(ckpt.processor([ckpt.images[name]] * 2, [PROMPT] * 2)), row
        else:
            alone, r = run(ckpt.batches[name]), 0
        np.testing.assert_array_equal(out.tokens[row], alone.tokens[r], err_msg=f"{spec} {name}")
        np.testing.assert_array_equal(out.kept[row][out.kept[row] >= 0], alone.kept[r], err_msg=f"{spec} {name}")
        for stage, value in out.stages.items():
            if isinstance(value, np.ndarray):  # a stage's kept indices
                np.testing.assert_array_equal(value[row][value[row] >= 0], alone.stages[stage][r], err_msg=stage)
        if "dyrate" in spec:
            np.testing.assert_array_equal(out.kept_per_token[row], alone.kept_per_token[r])
            np.testing.assert_array_equal(out.rate_per_token[row], alone.rate_per_token[r])
    if "dyrate" in spec:
        assert len(set(out.rate_per_token[0].tolist())) > 1  # the rate really changes during the run


def test_every_parameter_has_logical_axes(ckpt):
    from flax import nnx

    from vtp_jax.modeling import axes

    names = axes.logical_axes(nnx.state(ckpt.model, nnx.Param))
    shapes = {k: v.shape for k, v in _flat_params(ckpt.model).items()}
    assert set(names) == set(shapes)
    unnamed = [k for k, v in names.items() if v is None or len(v) != len(shapes[k])]
    assert not unnamed, unnamed
    assert names["image_newline"] == ("embed",) and names["lm_head.kernel"] == ("embed", "vocab")


def _flat_params(model):
    from vtp_jax import checkpoint

    return checkpoint.flatten(_params(model))
