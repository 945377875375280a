"""bf16 models: compiled memory of every generation function, and bf16 numerics against the float32 model.

XLA's CPU backend turns every bf16 dot into ``convert(W) → f32 dot``; with its default scheduler all converts run
first, so the compiled temp memory of a bf16 model was the float32 size of all its weights (2× the parameter
bytes; a 7B model asked for 27.5 GB). ``vtp_jax.modeling.layers`` converts kernels block by block and the
generators compile with the memory-optimised scheduler; these tests keep the float32 copy from coming back
unnoticed: ``memory_analysis().temp_size_in_bytes`` of every jitted generation function (LLaVA prefill, the
ToDRE-stage-2 head and tail, decode; LLaDA-V encode, first denoising step, later steps) stays below 25% of the
parameter bytes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vtp_jax.config import config_from_hf
from vtp_jax.generation.autoregressive import AutoregressiveGenerator
from vtp_jax.generation.diffusion import DiffusionConfig, DiffusionGenerator
from vtp_jax.modeling import layers
from vtp_jax.modeling.llada_v import LladaV
from vtp_jax.modeling.llava import Llava
from vtp_jax.runtime import build_methods
from vtp_jax.testbed import hf_llada_v, hf_llava

# Wide enough that weights dominate activations (as at real size), small enough to compile in seconds.
LLAVA_SIZES = dict(image_size=64, patch_size=16, vision_hidden=128, vision_layers=2, vision_heads=4, vision_mlp=512,
                   text_hidden=256, text_layers=4, text_heads=4, text_kv_heads=4, text_mlp=704, vocab_size=1024,
                   max_position_embeddings=512)
LLADA_SIZES = dict(image_size=32, patch_size=8, vision_hidden=128, vision_layers=2, vision_heads=4, vision_mlp=512,
                   text_hidden=256, text_layers=4, text_heads=4, text_kv_heads=4, text_mlp=704, vocab_size=1024)
TEMP_SHARE = 0.25


def _param_bytes(model) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype) if isinstance(x, jax.Array) else x, tree)


def _record(gen, names):
    """Wraps the generator's jitted functions; returns {name: (jitted fn, abstract args, kwargs)} of the last call
    of each (shapes only: decode donates its caches)."""
    calls = {}
    for name in names:
        fn = getattr(gen, name)

        def wrapper(*args, _fn=fn, _name=name, **kwargs):
            calls[_name] = (_fn, _abstract(args), _abstract(kwargs))
            return _fn(*args, **kwargs)

        setattr(gen, name, wrapper)
    return calls


def _check_temp(calls, names, model):
    param_bytes = _param_bytes(model)
    assert set(calls) >= set(names)
    for name in names:
        fn, args, kwargs = calls[name]
        temp = fn.lower(*args, **kwargs).compile().memory_analysis().temp_size_in_bytes
        assert temp < TEMP_SHARE * param_bytes, (
            f"{name}: compiled temp {temp} bytes is ≥ {TEMP_SHARE:.0%} of the {param_bytes} parameter bytes"
        )


def _llava(dtype):
    cfg = config_from_hf(hf_llava.tiny_llava_config(**LLAVA_SIZES).to_dict())
    return Llava(cfg, dtype=dtype, rngs=nnx.Rngs(0)), cfg


def _llava_inputs(cfg, batch=1):
    rng = np.random.default_rng(0)
    n_v = cfg.num_visual_tokens
    ids = np.concatenate([rng.integers(5, cfg.text.vocab_size, (batch, 6)), np.full((batch, n_v), cfg.image_token_id),
                          rng.integers(5, cfg.text.vocab_size, (batch, 10))], axis=1)
    pixels = rng.standard_normal((batch, 3, cfg.vision.image_size, cfg.vision.image_size)).astype(np.float32)
    return ids, np.ones_like(ids), pixels


@pytest.mark.parametrize("spec", ["none", "fastv", "todre", "todre+todre-relevance"])
def test_llava_bf16_compiled_temp_memory(spec):
    model, cfg = _llava(jnp.bfloat16)
    method = build_methods(spec, "llava", cfg.num_visual_tokens, cfg.text.num_hidden_layers)
    gen = AutoregressiveGenerator(model, method)
    calls = _record(gen, ("prefill", "prefill_head", "prefill_tail", "decode"))
    gen.generate_arrays(*_llava_inputs(cfg), max_new_tokens=4)
    staged = ("prefill_head", "prefill_tail") if "todre-relevance" in spec else ("prefill",)
    _check_temp(calls, staged + ("decode",), model)


def _llada(dtype):
    cfg = config_from_hf(hf_llada_v.tiny_llada_v_config(**LLADA_SIZES))
    return LladaV(cfg, dtype=dtype, rngs=nnx.Rngs(0)), cfg


def _llada_inputs(model, cfg, hw=(40, 60)):
    rng = np.random.default_rng(0)
    layout = model.layout(hw)
    ids = np.concatenate([rng.integers(5, 200, (1, 6)), np.full((1, layout.num_tokens), cfg.image_token_id),
                          rng.integers(5, 200, (1, 8))], axis=1)
    s = cfg.vision.image_size
    pixels = rng.standard_normal((1, layout.num_tiles, 3, s, s)).astype(np.float32)
    return ids, np.ones_like(ids), {"pixel_values": pixels, "image_size": hw}


@pytest.mark.parametrize("spec", ["none", "redvtp", "todre"])
def test_llada_v_bf16_compiled_temp_memory(spec):
    model, cfg = _llada(jnp.bfloat16)
    ids, mask, image = _llada_inputs(model, cfg)
    n_v = int((ids[0] == cfg.image_token_id).sum())
    method = build_methods(spec, "llada_v", n_v, cfg.text.num_hidden_layers)
    dcfg = DiffusionConfig(gen_length=8, block_length=8, steps=4, mask_id=cfg.mask_token_id)
    gen = DiffusionGenerator(model, dcfg, method)
    calls = _record(gen, ("encode", "first_step", "denoise"))
    gen.generate_arrays(ids, mask, image)
    _check_temp(calls, ("encode", "first_step", "denoise"), model)


def test_weight_dot_general_blocks_match_plain_dot():
    """The blocked bf16 kernel product equals the float32 product of the bf16 values (only the float32 summation
    order differs), and float32 kernels take the plain dot."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 5, 700)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((700, 96)), jnp.bfloat16)
    old = layers.CPU_BLOCK_BYTES
    try:
        layers.CPU_BLOCK_BYTES = 700 * 96 * 4 // 7  # force 7 blocks
        assert len(layers._contraction_blocks(700, 96)) == 7
        got = jax.jit(lambda a, b: layers.weight_dot_general(a, b, (((2,), (0,)), ((), ()))))(x, w)
    finally:
        layers.CPU_BLOCK_BYTES = old
    ref = np.asarray(x, np.float32) @ np.asarray(w, np.float32)
    assert got.dtype == jnp.bfloat16 and got.shape == (3, 5, 96)
    np.testing.assert_allclose(np.asarray(got, np.float32), ref, rtol=8e-3, atol=8e-3)
    x32, w32 = (jnp.asarray(a, jnp.float32) for a in (x, w))
    plain = layers.weight_dot_general(x32, w32, (((2,), (0,)), ((), ())))
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(jax.lax.dot_general(x32, w32, (((2,), (0,)), ((), ())))))


def _cast_copy(model, cls, cfg, dtype):
    """The same weights in ``dtype`` (a model built in ``dtype``, its parameters replaced by cast copies)."""
    other = cls(cfg, dtype=dtype, rngs=nnx.Rngs(1))
    nnx.update(other, jax.tree.map(lambda x: x.astype(dtype), nnx.state(model, nnx.Param)))
    return other


def _perturbed(model, seed=0):
    """Wider random weights than the initialiser's, so every layer moves the logits (as in the parity tests)."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda x: x + jnp.asarray(rng.normal(0, 0.05, x.shape), x.dtype), state))
    return model


@pytest.mark.parametrize("family", ["llava", "llada_v"])
def test_bf16_logits_close_to_float32(family):
    """bf16 weights and compute against the float32 model on the same (bf16-representable) weights: logits agree to
    bf16 precision (a few bf16 ulps of the logit scale, accumulated over 4 layers) and rank the same top token at
    nearly every position."""
    if family == "llava":
        model32, cfg = _llava(jnp.float32)
        ids, mask, pixels = _llava_inputs(cfg, batch=2)
        run = lambda m: m(jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask))  # noqa: E731
        cls = Llava
    else:
        model32, cfg = _llada(jnp.float32)
        ids, mask, image = _llada_inputs(model32, cfg)
        run = lambda m: m(jnp.asarray(ids), jnp.asarray(image["pixel_values"]), jnp.asarray(mask),  # noqa: E731
                          image_size=image["image_size"])
        cls = LladaV
    model32 = _perturbed(model32)
    model16 = _cast_copy(model32, cls, cfg, jnp.bfloat16)
    model32 = _cast_copy(model16, cls, cfg, jnp.float32)  # float32 model on exactly the bf16 weights
    ref, got = np.asarray(run(model32)), np.asarray(run(model16))
    assert got.dtype == np.float32 and got.shape == ref.shape
    scale = np.abs(ref).max()
    err = np.abs(got - ref).max()
    assert err <= 0.04 * scale, (err, scale)
    assert np.mean(np.abs(got - ref)) <= 0.006 * scale
    assert np.mean(got.argmax(-1) == ref.argmax(-1)) >= 0.9
