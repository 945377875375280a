"""Shared LLaDA-V test helpers (used by tests/test_llada_v_parity.py and tests/test_redvtp.py).

A tiny LLaDA-V test case (``SIZES``): the PyTorch reference (:class:`vtp_jax.testbed.torch_llada_v.Reference`) and
vtp_jax ``LladaV`` models loaded with its weights (:func:`make_case`), the matching
``LlavaOnevisionImageProcessorPil`` (:func:`make_image_processor`), random images and processed pixels
(:func:`random_images`, :func:`processed_pixels`) and prompt ids with image placeholders (:func:`llada_inputs`).
Requires torch and transformers.
"""

from __future__ import annotations

import dataclasses
import re

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vtp_jax.config import llada_v_config_from_hf
from vtp_jax.families.llada_v.names import canonical_llada_name, is_ignored_llada_name
from vtp_jax.modeling.llada_v import LladaV
from vtp_jax.testbed import hf_llada_v
from vtp_jax.testbed.torch_llada_v import Reference

SIZES = dict(image_size=32, patch_size=8, vision_hidden=32, vision_layers=2, vision_heads=4, vision_mlp=64,
             text_hidden=64, text_layers=2, text_heads=4, text_mlp=128, vocab_size=320, max_grid=2)


def abstract_model(cfg) -> LladaV:
    """A LladaV whose parameters are shape placeholders (no eager init: that costs seconds of per-op compiles on
    CPU); :func:`load_into` then fills every parameter."""
    return nnx.eval_shape(lambda: LladaV(cfg, rngs=nnx.Rngs(0)))


def load_into(model: LladaV, tensors: dict[str, np.ndarray]) -> None:
    """Converts named torch tensors with ``canonical_llada_name`` and writes them into ``model`` (all or error)."""
    state = nnx.state(model, nnx.Param)
    flat = dict(nnx.to_flat_state(state))
    new, seen = [], set()
    for name, arr in tensors.items():
        target = canonical_llada_name(name)
        if target is None:
            assert is_ignored_llada_name(name), f"unmapped tensor {name}"
            continue
        path = target.state_path()
        assert path in flat, (name, path)
        assert path not in seen, f"duplicate {path}"
        if target.transform == "linear":
            arr = arr.T
        elif target.transform == "conv":
            arr = np.transpose(arr, (2, 3, 1, 0))
        var = flat[path]
        assert arr.shape == tuple(var.shape), (name, arr.shape, var.shape)
        new.append((path, var.replace(jnp.asarray(arr, var.dtype))))
        seen.add(path)
    assert seen == set(flat), f"missing: {sorted(set(flat) - seen)}"
    nnx.update(model, nnx.from_flat_state(new))


def llada_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames the LLM part to plain LLaDA-8B names (model.transformer.*)."""
    table = [
        (r"model\.embed_tokens\.weight", "model.transformer.wte.weight"),
        (r"model\.layers\.(\d+)\.input_layernorm\.weight", r"model.transformer.blocks.\1.attn_norm.weight"),
        (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", r"model.transformer.blocks.\1.ff_norm.weight"),
        (r"model\.layers\.(\d+)\.self_attn\.([qkv]_proj)\.weight", r"model.transformer.blocks.\1.\2.weight"),
        (r"model\.layers\.(\d+)\.self_attn\.o_proj\.weight", r"model.transformer.blocks.\1.attn_out.weight"),
        (r"model\.layers\.(\d+)\.mlp\.gate_proj\.weight", r"model.transformer.blocks.\1.ff_proj.weight"),
        (r"model\.layers\.(\d+)\.mlp\.up_proj\.weight", r"model.transformer.blocks.\1.up_proj.weight"),
        (r"model\.layers\.(\d+)\.mlp\.down_proj\.weight", r"model.transformer.blocks.\1.ff_out.weight"),
        (r"model\.norm\.weight", "model.transformer.ln_f.weight"),
        (r"lm_head\.weight", "model.transformer.ff_out.weight"),
    ]
    out = {}
    for k, v in state.items():
        for pat, rep in table:
            if re.fullmatch(pat, k):
                k = re.sub(pat, rep, k)
                break
        out[k] = v
    return out


@dataclasses.dataclass
class Case:
    """A PyTorch reference, its HF-style config and the vtp_jax models loaded with its weights."""

    ref: Reference
    config: dict
    models: dict  # max_num_patches -> LladaV


def make_case(kv_heads: int) -> Case:
    """A ``SIZES`` test case with ``kv_heads`` KV heads; models for anyres_max_1 and anyres_max_4."""
    config = hf_llada_v.tiny_llada_v_config(**SIZES, text_kv_heads=kv_heads)
    ref = Reference(config)
    state = ref.llada_v_state()
    models = {}
    for n in (1, 4):  # anyres_max_1 downsamples 2×2 grids; anyres_max_4 never does here
        cfg = llada_v_config_from_hf({**config, "image_aspect_ratio": f"anyres_max_{n}"})
        model = abstract_model(cfg)
        load_into(model, state)
        models[n] = model
    return Case(ref, config, models)


def make_image_processor():
    """The PIL ``LlavaOnevisionImageProcessorPil`` for ``SIZES`` (tile size, grid pinpoints, mean/std 0.5)."""
    import transformers

    s = SIZES["image_size"]
    return transformers.LlavaOnevisionImageProcessorPil(
        size={"height": s, "width": s}, image_grid_pinpoints=hf_llada_v.grid_pinpoints(SIZES["max_grid"], s),
        image_mean=[0.5] * 3, image_std=[0.5] * 3)


def random_images(size, n, seed):
    """``n`` seeded random RGB PIL images of ``size`` (height, width)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)) for _ in range(n)]


def processed_pixels(image_processor, size, n=2, seed=0):
    """float32 pixel_values of ``n`` random images of ``size`` through ``image_processor``."""
    out = image_processor(random_images(size, n, seed), return_tensors="np")
    assert [tuple(s) for s in out["image_sizes"]] == [size] * n  # (height, width)
    return out["pixel_values"].astype(np.float32)


def llada_inputs(model, size, *, text_len=10, seed=0, pad_first=3):
    """Two rows: random text with one run of N_v image placeholders; row 0 left-padded by ``pad_first``."""
    rng = np.random.default_rng(seed)
    n_v = model.num_visual_tokens(size)
    rows = []
    for b in range(2):
        ids = rng.integers(hf_llada_v.IMAGE_TOKEN_ID + 1, SIZES["vocab_size"], size=text_len)
        at = 2 + 3 * b
        rows.append(np.concatenate([ids[:at], np.full(n_v, hf_llada_v.IMAGE_TOKEN_ID), ids[at:]]))
    ids = np.stack(rows).astype(np.int64)
    mask = np.ones_like(ids)
    ids = np.concatenate([np.full((2, pad_first), hf_llada_v.EOS_ID), ids], axis=1)
    mask = np.concatenate([np.zeros((2, pad_first), np.int64), mask], axis=1)
    mask[1, :pad_first] = 1  # row 1 is not padded: its first tokens are real EOS tokens
    return ids, mask
