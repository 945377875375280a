"""fp32 parity of the converted vtp_jax LLaVA against transformers' ``LlavaForConditionalGeneration``.

Each case builds a tiny random HF model, writes it in some on-disk layout, converts it with ``vtp-convert``'s
engine and loads it with ``vtp_jax.checkpoint.load``. Compared (max abs error ≤ 1e-4, matmul precision "highest"):
vision hidden states, projector outputs and full logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import LLAMA3_ROPE, llava_inputs

torch = pytest.importorskip("torch")

ATOL = 1e-4

CASES = {
    "mha_default": dict(),
    "gqa_full_tied": dict(text_kv_heads=2, vision_feature_select_strategy="full", tie_word_embeddings=True),
    "llama3_rope": dict(rope_scaling=LLAMA3_ROPE),
    "hub_names": dict(names="hub"),
    "memory_names": dict(names="memory"),
    "sharded": dict(shard_bytes=20_000),
    "multi_layer_features": dict(vision_feature_layer=[-3, -1]),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, converted_llava):
    return converted_llava(**CASES[request.param])


def _max_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float32), ref.detach().numpy()
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max())


def test_vision_hidden_states(case):
    _, pixels = llava_inputs(case.cfg)
    with torch.no_grad():
        hidden = case.hf_model.model.vision_tower(torch.from_numpy(pixels), output_hidden_states=True).hidden_states
    n = case.cfg.vision.num_hidden_layers
    for layer in range(-(n + 1), n + 1):
        ours = case.model.vision_tower.features(jnp.asarray(pixels), (layer,))
        assert _max_err(ours, hidden[layer]) <= ATOL, layer


def test_projector_output(case):
    _, pixels = llava_inputs(case.cfg)
    with torch.no_grad():
        ref = torch.stack(list(case.hf_model.get_image_features(pixel_values=torch.from_numpy(pixels)).pooler_output))
    ours = case.model.image_features(jnp.asarray(pixels))
    assert ours.shape[1] == case.cfg.num_visual_tokens
    assert _max_err(ours, ref) <= ATOL


def test_logits(case):
    ids, pixels = llava_inputs(case.cfg)
    with torch.no_grad():
        ref = case.hf_model(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(pixels)).logits
    ours = case.model(jnp.asarray(ids), jnp.asarray(pixels))
    assert float(ref.abs().max()) > 0.5  # the comparison is not between near-zero tensors
    assert _max_err(ours, ref) <= ATOL


def test_bfloat16_conversion_loads_bf16_params(converted_llava):
    fp32 = converted_llava()
    bf16 = converted_llava(dtype="bfloat16")
    assert bf16.meta["dtype"] == "bfloat16"
    leaves = jax.tree.leaves(nnx_params(bf16.model))
    assert leaves and all(leaf.dtype == jnp.bfloat16 for leaf in leaves)
    # every bf16 parameter is the fp32 one rounded to bf16
    for a, b in zip(jax.tree.leaves(nnx_params(fp32.model)), leaves):
        np.testing.assert_array_equal(np.asarray(a.astype(jnp.bfloat16)), np.asarray(b))
    ids, pixels = llava_inputs(bf16.cfg)
    from flax import nnx

    # one jitted graph compiles faster than the op-by-op bf16 kernels eager mode would build
    logits = np.asarray(nnx.jit(lambda m, i, p: m(i, p))(bf16.model, jnp.asarray(ids), jnp.asarray(pixels)))
    ref = np.asarray(fp32.model(jnp.asarray(ids), jnp.asarray(pixels)))
    assert np.isfinite(logits).all()
    assert np.abs(logits - ref).max() <= 0.1 * np.abs(ref).max()


def nnx_params(model):
    from flax import nnx

    return nnx.to_pure_dict(nnx.state(model, nnx.Param))
