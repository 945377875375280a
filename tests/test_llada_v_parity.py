"""fp32 parity of vtp_jax's LLaDA-V against a PyTorch reference assembled from transformers parts.

LLaDA-V is not in transformers, so the reference is built like LLaDA-V's own code builds it:
  * ``SiglipVisionModel`` with one layer more than we store, features = ``hidden_states[-2]`` (LLaDA-V deletes the
    last SigLIP layer and takes the new last output, without post-layernorm);
  * ``nn.Sequential(Linear, GELU, Linear)`` (``mlp2x_gelu``, saved as ``mm_projector.0`` / ``.2``);
  * transformers' ``LlavaOnevisionModel.pack_image_features`` (anyres_max_N, spatial_unpad, image_newline);
  * a ``LlamaModel`` made bidirectional: eager attention, an explicit 4-D additive mask that is 0 for every valid key
    (returned as-is by transformers' mask preparation) and ``is_causal = False`` on every attention module;
  * an untied ``lm_head``.

Weights are renamed to LLaDA-V's on-disk names (and, in one test, plain LLaDA-8B LLM names) and loaded into our model
through ``vtp_jax.families.llada_v.names.canonical_llada_name``. Inputs come from the real ``LlavaOnevisionImageProcessor``
(PIL backend). Compared (max abs error ≤ 1e-4, matmul precision "highest"): vision features, packed features with
newline (with and without the anyres_max downsample), and full logits (MHA and GQA, with left padding).
"""

from __future__ import annotations

import dataclasses

import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vtp_jax.families.llada_v.names import canonical_llada_name, is_ignored_llada_name
from vtp_jax.config import ConfigError, config_from_hf
from vtp_jax.modeling.anyres import AnyresError, pack_features
from vtp_jax.testbed import hf_llada_v

torch = pytest.importorskip("torch")
import transformers  # noqa: E402

from tests.llada_v_case import (  # noqa: E402
    SIZES, abstract_model, llada_inputs, llada_names, load_into, make_case, make_image_processor, processed_pixels,
    random_images,
)

jax.config.update("jax_default_matmul_precision", "highest")

ATOL = 1e-4
# (height, width) → grid with 32-px tiles: 1×2, 2×1, 1×1, 2×2 (rows unpadded), 2×2 (columns unpadded)
IMAGE_SIZES = {(30, 64): (1, 2), (64, 30): (2, 1), (20, 31): (1, 1), (50, 90): (2, 2), (90, 70): (2, 2)}
MAX_TILES = 5


# ---------------------------------------------------------------------------------------------------------------------
# reference: vtp_jax.testbed.torch_llada_v.Reference (see the module docstring above); the test case, model loading
# and inputs: tests/llada_v_case.py


# ---------------------------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def mha():
    return make_case(4)


@pytest.fixture(scope="module")
def gqa():
    return make_case(2)


@pytest.fixture(scope="module")
def image_processor():
    return make_image_processor()


def _max_err(ours, ref) -> float:
    ours = np.asarray(ours, np.float32)
    ref = ref.detach().numpy() if hasattr(ref, "detach") else np.asarray(ref)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max())


# ---------------------------------------------------------------------------------------------------------------------
# tests


def test_vision_features_are_hidden_state_minus_two(mha, image_processor):
    pix = processed_pixels(image_processor, (64, 64), n=1)[0]  # 5 tiles
    with torch.no_grad():
        ref = mha.ref.siglip(torch.from_numpy(pix), output_hidden_states=True).hidden_states[-2]
    model = mha.models[4]
    assert model.cfg.vision.num_hidden_layers == 2 and model.cfg.vision_feature_layer == (-1,)
    ours = jax.jit(lambda m, px: m.vision_tower.features(px, m.cfg.vision_feature_layer))(model, jnp.asarray(pix))
    assert _max_err(ours, ref) <= ATOL


@pytest.fixture(scope="module")
def jitted():
    """Jitted pieces shared by the tests (compiled once per shape)."""
    return types.SimpleNamespace(
        tiles=jax.jit(lambda m, px: m.tile_features(px)),
        pack=jax.jit(lambda t, nl, layout: jax.vmap(lambda x: pack_features(x, nl, layout))(t), static_argnums=2),
        forward=jax.jit(lambda m, ids, px, mask, image_size: m(ids, px, mask, image_size=image_size),
                        static_argnames="image_size"),
    )


def test_grids_of_the_test_sizes(mha):
    for size, grid in IMAGE_SIZES.items():
        assert mha.models[4].layout(size).grid == grid, size


@pytest.mark.parametrize("max_num_patches", [4, 1])
def test_packed_features(mha, image_processor, jitted, max_num_patches):
    model = mha.models[max_num_patches]
    downsampled = False
    for size in IMAGE_SIZES:
        pix = processed_pixels(image_processor, size)
        with torch.no_grad():
            ref = mha.ref.image_features(torch.from_numpy(pix), [size, size], max_num_patches)
        layout = model.layout(size)
        downsampled |= layout.downsampled
        # Tower + projector once for a fixed tile count (extra zero tiles, like the processor's batch padding, are
        # ignored by the packing), then the per-layout packing.
        padded = np.concatenate([pix, np.zeros((2, MAX_TILES - pix.shape[1]) + pix.shape[2:], np.float32)], axis=1)
        tiles = jitted.tiles(model, jnp.asarray(padded))
        ours = jitted.pack(tiles, model.image_newline[...], layout)
        assert ours.shape == (2, layout.num_tokens, SIZES["text_hidden"])
        for b in range(2):
            assert _max_err(ours[b], ref[b]) <= ATOL, (size, b)
    assert downsampled == (max_num_patches == 1)


def test_image_features_api(mha, image_processor):
    """``image_features`` on the processor's padded output (rows of one batch share the grid)."""
    model, size = mha.models[1], (50, 90)
    pix = processed_pixels(image_processor, size)
    with torch.no_grad():
        ref = mha.ref.image_features(torch.from_numpy(pix), [size, size], 1)
    padded = np.concatenate([pix, np.zeros((2, 2) + pix.shape[2:], np.float32)], axis=1)
    fn = jax.jit(lambda m, px: m.image_features(px, grid=(2, 2), image_size=size))
    ours = fn(model, jnp.asarray(padded))
    for b in range(2):
        assert _max_err(ours[b], ref[b]) <= ATOL
    with pytest.raises(AnyresError, match="does not match"):
        model.image_features(jnp.asarray(pix), grid=(1, 2), image_size=size)
    with pytest.raises(AnyresError, match="tiles"):
        model.image_features(jnp.asarray(pix[:, :3]), image_size=size)


@pytest.mark.parametrize("which,max_num_patches,size", [("mha", 1, (90, 70)), ("gqa", 4, (64, 30))])
def test_logits(request, image_processor, jitted, which, max_num_patches, size):
    case = request.getfixturevalue(which)
    model = case.models[max_num_patches]
    pix = processed_pixels(image_processor, size, seed=1)
    ids, mask = llada_inputs(model, size)
    with torch.no_grad():
        visual = case.ref.image_features(torch.from_numpy(pix), [size, size], max_num_patches)
        ref = case.ref.logits(ids, mask, visual)
    ours = jitted.forward(model, jnp.asarray(ids), jnp.asarray(pix), jnp.asarray(mask), size)
    assert float(ref.abs().max()) > 0.5  # not a comparison of near-zero tensors
    assert _max_err(ours, ref) <= ATOL


def test_bidirectional_attention(mha, image_processor, jitted):
    """Changing the last token changes the logits of every earlier position — in the reference and in ours — while
    the causal control (transformers' default mask) leaves them untouched (so the check can fail)."""
    size, model = (50, 90), mha.models[4]
    pix = processed_pixels(image_processor, size, seed=2)
    ids, mask = llada_inputs(model, size, pad_first=0)
    ids2 = ids.copy()
    ids2[:, -1] = np.where(ids[:, -1] == 100, 101, 100)
    with torch.no_grad():
        visual = mha.ref.image_features(torch.from_numpy(pix), [size, size], 4)
        r1, r2 = mha.ref.logits(ids, mask, visual), mha.ref.logits(ids2, mask, visual)
        c1, c2 = mha.ref.logits(ids, mask, visual, causal=True), mha.ref.logits(ids2, mask, visual, causal=True)
    o1 = np.asarray(jitted.forward(model, jnp.asarray(ids), jnp.asarray(pix), jnp.asarray(mask), size))
    o2 = np.asarray(jitted.forward(model, jnp.asarray(ids2), jnp.asarray(pix), jnp.asarray(mask), size))
    earlier = slice(0, ids.shape[1] - 1)
    assert float((r1 - r2)[:, earlier].abs().amax(dim=-1).min()) > 1e-3  # every earlier position moved
    assert float(np.abs(o1 - o2)[:, earlier].max(axis=-1).min()) > 1e-3
    assert float((c1 - c2)[:, earlier].abs().max()) == 0.0  # causal: earlier positions cannot see the change
    assert _max_err(o1, r1) <= ATOL and _max_err(o2, r2) <= ATOL  # also the MHA, no-downsample logits parity


def test_plain_llada_names_load_identically(mha):
    state = mha.ref.llada_v_state()
    renamed = llada_names(state)
    assert "model.transformer.blocks.0.ff_proj.weight" in renamed
    assert "model.layers.0.mlp.gate_proj.weight" not in renamed
    other = abstract_model(mha.models[4].cfg)
    load_into(other, renamed)
    a = nnx.to_flat_state(nnx.state(mha.models[4], nnx.Param))
    b = dict(nnx.to_flat_state(nnx.state(other, nnx.Param)))
    for path, var in a:
        np.testing.assert_array_equal(np.asarray(var[...]), np.asarray(b[path][...]), err_msg=str(path))


def test_name_map_examples():
    t = canonical_llada_name("model.vision_tower.vision_tower.vision_model.encoder.layers.25.self_attn.out_proj.weight")
    assert t.dotted == "vision_tower.layers.25.self_attn.o_proj.kernel" and t.transform == "linear"
    t = canonical_llada_name("model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight")
    assert t.path == ("vision_tower", "patch_embedding", "kernel") and t.transform == "conv"
    t = canonical_llada_name("model.vision_tower.vision_tower.vision_model.post_layernorm.weight")
    assert t.path == ("vision_tower", "post_layernorm", "scale")
    assert canonical_llada_name("model.image_newline").path == ("image_newline",)
    assert canonical_llada_name("model.mm_projector.0.bias").dotted == "multi_modal_projector.linear_1.bias"
    assert canonical_llada_name("model.transformer.ff_out.weight").dotted == "lm_head.kernel"
    assert canonical_llada_name("model.transformer.blocks.7.ff_out.weight").dotted == \
        "language_model.layers.7.mlp.down_proj.kernel"
    assert canonical_llada_name("model.transformer.blocks.7.attn_out.weight").dotted == \
        "language_model.layers.7.self_attn.o_proj.kernel"
    assert canonical_llada_name("model.mm_projector.1.weight") is None  # GELU has no parameters
    assert canonical_llada_name("model.vision_resampler.foo") is None
    assert is_ignored_llada_name("model.vision_tower.vision_tower.vision_model.head.probe")
    assert is_ignored_llada_name("model.layers.3.self_attn.rotary_emb.inv_freq")


# ---------------------------------------------------------------------------------------------------------------------
# config and test-bed checkpoints


def test_config_requires_mask_token_id():
    cfg = hf_llada_v.tiny_llada_v_config(mask_token_id=None)
    with pytest.raises(ConfigError, match="mask_token_id"):
        config_from_hf(cfg)
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        config_from_hf({**cfg, "mask_token_id": cfg["vocab_size"]})


def test_config_of_a_real_llada_v_config_json():
    """A LLaDA-V-style config.json without vision_config: SigLIP so400m (26 stored layers) is assumed, the mask id
    falls back to LLaDA's because the vocabulary is LLaDA's, pinpoints come from the range string."""
    d = {
        "model_type": "llava_llada", "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 32, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "vocab_size": 126464, "max_position_embeddings": 8192, "mm_vision_tower": "google/siglip2-so400m-patch14-384",
        "mm_hidden_size": 1152, "mm_projector_type": "mlp2x_gelu", "mm_patch_merge_type": "spatial_unpad",
        "image_aspect_ratio": "anyres_max_4", "image_grid_pinpoints": "(1x1),...,(6x6)", "mm_vision_select_layer": -2,
        "eos_token_id": 126081, "bos_token_id": 126080,
    }
    cfg = config_from_hf(d)
    assert cfg.family == "llada_v" and not cfg.text.causal
    assert (cfg.vision.hidden_size, cfg.vision.num_hidden_layers, cfg.vision.intermediate_size) == (1152, 26, 4304)
    assert cfg.patches_per_side == 27 and cfg.tokens_per_tile == 729
    assert cfg.mask_token_id == 126336 and cfg.image_token_id == -200 and cfg.max_num_patches == 4
    assert len(cfg.image_grid_pinpoints) == 36 and cfg.text.rope.theta == 500000.0 and cfg.text.head_dim == 128
    llada_style = {k: v for k, v in d.items() if k not in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                          "num_key_value_heads", "intermediate_size", "vocab_size")}
    llada_style.update(d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, mlp_hidden_size=12288,
                       embedding_size=126464, vocab_size=126464, mask_token_id=126336)
    assert config_from_hf(llada_style).text == cfg.text
    # the real file stores the pinpoints expanded, [[384, 384], [384, 768], …], and a BOS id (128000) that is not the
    # tokenizer's (126080, ``<|startoftext|>``); neither changes the model (the BOS id is never read from config.json)
    expanded = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]
    real = config_from_hf({**d, "image_grid_pinpoints": expanded, "bos_token_id": 128000})
    assert set(real.image_grid_pinpoints) == set(cfg.image_grid_pinpoints)
    assert (real.vision, real.mask_token_id) == (cfg.vision, cfg.mask_token_id)
    assert real.text == dataclasses.replace(cfg.text, bos_token_id=128000)  # recorded as given, read by nothing
    for bad in ({"mm_projector_type": "linear"}, {"image_aspect_ratio": "pad"}, {"mm_patch_merge_type": "flat"},
                {"mm_hidden_size": 1024}, {"mm_vision_tower": "openai/clip-vit-large-patch14-336"}):
        with pytest.raises(ConfigError):
            config_from_hf({**d, **bad})


@pytest.mark.parametrize("names", ["llada_v", "llada"])
def test_testbed_checkpoint_loads_and_runs(tmp_path, jitted, names):
    from safetensors.numpy import load_file

    out = hf_llada_v.build_tiny_llada_v(tmp_path / names, names=names, **SIZES)
    with open(os.path.join(out, "config.json")) as fh:
        cfg = config_from_hf(json.load(fh))
    model = abstract_model(cfg)
    load_into(model, load_file(os.path.join(out, "model.safetensors")))

    tok = transformers.AutoTokenizer.from_pretrained(out)
    image_processor = transformers.AutoImageProcessor.from_pretrained(out)
    assert tok.convert_tokens_to_ids("[MASK]") == cfg.mask_token_id == hf_llada_v.MASK_ID
    assert tok.convert_tokens_to_ids("<image>") == cfg.image_token_id
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}],
        add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\n<image>\n")
    assert prompt.endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    size = (40, 100)
    px = image_processor(random_images(size, 1, 5), return_tensors="np")
    n_v = model.num_visual_tokens(size)
    head, tail = prompt.split("<image>")
    ids = tok(head, add_special_tokens=False)["input_ids"] + [cfg.image_token_id] * n_v + \
        tok(tail, add_special_tokens=False)["input_ids"]
    assert tuple(px["image_sizes"][0]) == size
    logits = jitted.forward(model, jnp.asarray([ids]), jnp.asarray(px["pixel_values"]), jnp.ones((1, len(ids)), bool),
                            size)
    assert logits.shape == (1, len(ids), cfg.text.vocab_size) and bool(jnp.isfinite(logits).all())
