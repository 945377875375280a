"""Logical axis names on every parameter (issue 18, sharding-ready parameters), and that they change nothing.

Every ``nnx.Param`` of a tiny LLaVA and a tiny LLaDA-V carries one logical name per dimension; the rules mapping
gives the expected ``PartitionSpec`` s; the names are metadata only — parameter values (same seed) equal those the
code produced before the names existed (fingerprints recorded then), the traced programs equal those of the same
model built without names, and a converted checkpoint loads, keeps the names and generates the greedy tokens it
generated before.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from tests.conftest import TINY, llava_inputs
from vtp_jax.config import config_from_hf
from vtp_jax.generation.autoregressive import AutoregressiveGenerator
from vtp_jax.modeling import axes, layers
from vtp_jax.modeling.axes import logical_axes, logical_partition_specs, partition_spec
from vtp_jax.modeling.decoder import SequenceState
from vtp_jax.modeling.llada_v import LladaV
from vtp_jax.modeling.llava import Llava
from vtp_jax.testbed import hf_llada_v, hf_llava

LLADA = dict(image_size=32, patch_size=8, vision_hidden=32, vision_layers=2, vision_heads=4, vision_mlp=64,
             text_hidden=64, text_layers=2, text_heads=4, text_kv_heads=2, text_mlp=128, vocab_size=320, max_grid=2)
RULES = {"embed": "fsdp", "heads": "tensor", "kv_heads": "tensor", "mlp": "tensor", "vocab": "tensor",
         "batch": "data"}

# Recorded with the code before the names existed (commit 7f6f337), nnx.Rngs(0), float32: (number of parameters,
# elements, Σ (i+1)·sum(param_i) over paths in sorted order, Σ sum(param²)).
FINGERPRINTS = {
    "llava": (64, 169280, 10858.69130258057, 2923.7415169121527),
    "llada_v": (63, 145184, 9793.663318517447, 2762.930435237045),
}
# Greedy tokens of the default ``converted_llava()`` checkpoint on llava_inputs(batch=2, text_len=10), 8 new tokens,
# recorded with the code before the names existed.
GREEDY_BEFORE = [[182, 80, 288, 98, 249, 80, 52, 84], [201, 44, 44, 44, 44, 4, 44, 4]]


def llava_cfg():
    return config_from_hf(hf_llava.tiny_llava_config(**TINY).to_dict())


def llada_cfg():
    return config_from_hf(hf_llada_v.tiny_llada_v_config(**LLADA))


@pytest.fixture(scope="module")
def models():
    """Randomly initialised tiny models (float32, seed 0) of both families."""
    return {"llava": Llava(llava_cfg(), rngs=nnx.Rngs(0)), "llada_v": LladaV(llada_cfg(), rngs=nnx.Rngs(0))}


def fingerprint(model):
    flat = sorted((".".join(map(str, p)), np.asarray(v[...], np.float64))
                  for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    return (len(flat), sum(a.size for _, a in flat), sum((i + 1) * a.sum() for i, (_, a) in enumerate(flat)),
            sum((a * a).sum() for _, a in flat))


@pytest.mark.parametrize("family", ["llava", "llada_v"])
def test_every_parameter_has_one_name_per_dimension(models, family):
    model = models[family]
    names = logical_axes(model)
    shapes = {".".join(map(str, p)): v.shape for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert names.keys() == shapes.keys() and len(names) == FINGERPRINTS[family][0]
    missing = [p for p, n in names.items() if n is None]
    assert not missing, f"parameters without logical axis names: {missing}"
    for path, n in names.items():
        assert len(n) == len(shapes[path]), (path, n, shapes[path])
        assert set(n) <= set(axes.PARAMETER_AXES), (path, n)


@pytest.mark.parametrize("family", ["llava", "llada_v"])
def test_names_of_each_parameter_kind(models, family):
    n = logical_axes(models[family])
    block = "language_model.layers.1."
    expected = {
        "language_model.embed_tokens.embedding": ("vocab", "embed"),
        block + "self_attn.q_proj.kernel": ("embed", "heads"),
        block + "self_attn.k_proj.kernel": ("embed", "kv_heads"),
        block + "self_attn.v_proj.kernel": ("embed", "kv_heads"),
        block + "self_attn.o_proj.kernel": ("heads", "embed"),
        block + "mlp.gate_proj.kernel": ("embed", "mlp"),
        block + "mlp.up_proj.kernel": ("embed", "mlp"),
        block + "mlp.down_proj.kernel": ("mlp", "embed"),
        block + "input_layernorm.weight": ("embed",),
        block + "post_attention_layernorm.weight": ("embed",),
        "language_model.norm.weight": ("embed",),
        "lm_head.kernel": ("embed", "vocab"),
        "multi_modal_projector.linear_1.kernel": ("vision_embed", "mlp"),
        "multi_modal_projector.linear_1.bias": ("mlp",),
        "multi_modal_projector.linear_2.kernel": ("mlp", "embed"),
        "vision_tower.patch_embedding.kernel": ("patch_height", "patch_width", "channels", "vision_embed"),
        "vision_tower.position_embedding.embedding": ("positions", "vision_embed"),
        "vision_tower.layers.0.self_attn.q_proj.kernel": ("vision_embed", "vision_heads"),
        "vision_tower.layers.0.self_attn.q_proj.bias": ("vision_heads",),
        "vision_tower.layers.0.self_attn.o_proj.kernel": ("vision_heads", "vision_embed"),
        "vision_tower.layers.0.self_attn.o_proj.bias": ("vision_embed",),
        "vision_tower.layers.0.mlp.fc1.kernel": ("vision_embed", "vision_mlp"),
        "vision_tower.layers.0.mlp.fc2.kernel": ("vision_mlp", "vision_embed"),
        "vision_tower.layers.0.layer_norm1.scale": ("vision_embed",),
        "vision_tower.post_layernorm.bias": ("vision_embed",),
    }
    if family == "llava":  # CLIP: class token, pre-LN, conv without bias
        expected |= {"vision_tower.class_embedding": ("vision_embed",),
                     "vision_tower.pre_layrnorm.scale": ("vision_embed",)}
    else:  # SigLIP: conv bias; LLaDA-V's image_newline
        expected |= {"vision_tower.patch_embedding.bias": ("vision_embed",), "image_newline": ("embed",)}
    assert {k: n[k] for k in expected} == expected


def test_partition_specs_from_rules(models):
    model = models["llava"]
    specs = logical_partition_specs(model, RULES)
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    assert jax.tree.structure(specs) == jax.tree.structure(pure)  # the restore target's structure
    lm, attn = specs["language_model"], specs["language_model"]["layers"][0]["self_attn"]
    assert attn["q_proj"]["kernel"] == P("fsdp", "tensor") and attn["k_proj"]["kernel"] == P("fsdp", "tensor")
    assert attn["o_proj"]["kernel"] == P("tensor", "fsdp")
    assert lm["embed_tokens"]["embedding"] == P("tensor", "fsdp")
    assert lm["layers"][1]["mlp"]["up_proj"]["kernel"] == P("fsdp", "tensor")
    assert lm["layers"][1]["mlp"]["down_proj"]["kernel"] == P("tensor", "fsdp")
    assert lm["norm"]["weight"] == P("fsdp")
    assert specs["lm_head"]["kernel"] == P("fsdp", "tensor")
    # names without a rule (the whole vision tower here) are replicated, one None per dimension
    assert specs["vision_tower"]["patch_embedding"]["kernel"] == P(None, None, None, None)
    assert specs["multi_modal_projector"]["linear_1"]["kernel"] == P(None, "tensor")
    # a mesh axis shards one dimension at most; tuples of mesh axes; (name, axis) pairs, the first pair wins
    assert partition_spec(("embed", "mlp"), {"embed": "fsdp", "mlp": "fsdp"}) == P("fsdp", None)
    assert partition_spec(("vocab", "embed"), {"vocab": ("fsdp", "tensor"), "embed": "tensor"}) == \
        P(("fsdp", "tensor"), None)
    assert partition_spec(("embed", "mlp"), [("mlp", "tensor"), ("embed", None), ("mlp", "fsdp")]) == \
        P(None, "tensor")
    assert partition_spec(None, RULES) == P()
    # the specs are valid on a mesh with those axes (one CPU device here): parameters placed on their shardings
    mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"), devices=jax.devices()[:1])
    placed = jax.device_put(pure, jax.tree.map(lambda p: jax.sharding.NamedSharding(mesh, p), specs))
    assert placed["lm_head"]["kernel"].sharding.spec == P("fsdp", "tensor")
    with pytest.raises(TypeError, match="mesh axis"):
        partition_spec(("embed",), {"embed": 3})
    with pytest.raises(TypeError, match="pure dicts"):
        logical_axes(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    # Flax's own reader sees the same names (nnx.get_partition_spec without rules gives the logical names)
    flax_specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
    assert flax_specs["lm_head"]["kernel"].get_value() == P("embed", "vocab")


def test_unnamed_parameters_and_rank_errors():
    lin = layers.linear(4, 8, bias=True, dtype=jnp.float32, rngs=nnx.Rngs(0))  # old call: no names, as before
    assert "out_sharding" not in lin.kernel.get_metadata()
    assert logical_axes(lin) == {"bias": None, "kernel": None}
    assert logical_partition_specs(lin, RULES) == {"bias": P(), "kernel": P()}
    with pytest.raises(ValueError, match="2 parameters have no logical axis names"):
        logical_partition_specs(lin, RULES, strict=True)
    with pytest.raises(ValueError, match="rank 2"):
        layers.linear(4, 8, bias=False, dtype=jnp.float32, rngs=nnx.Rngs(0), axes=("embed",))
    with pytest.raises(ValueError, match="rank 1"):
        axes.param(jnp.zeros(3), ("embed", "mlp"))
    with pytest.raises(TypeError, match="strings or None"):
        axes.param_metadata(("embed", 1))


@pytest.mark.parametrize("family", ["llava", "llada_v"])
def test_values_equal_those_before_the_names(models, family):
    got = fingerprint(models[family])
    want = FINGERPRINTS[family]
    assert got[:2] == want[:2]
    np.testing.assert_allclose(got[2:], want[2:], rtol=1e-9)


def test_names_change_neither_values_nor_traced_programs(monkeypatch):
    """The same models built with the names switched off (``param_metadata`` → {}): identical parameter values and
    dtypes (bf16 too), and identical lowered programs of the LLaVA forward and of one decoder forward."""
    named = LladaV(llada_cfg(), dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    named_abstract = nnx.eval_shape(lambda: Llava(llava_cfg(), rngs=nnx.Rngs(0)))
    monkeypatch.setattr(axes, "param_metadata", lambda names: {})
    plain = LladaV(llada_cfg(), dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    plain_abstract = nnx.eval_shape(lambda: Llava(llava_cfg(), rngs=nnx.Rngs(0)))
    assert all(n is None for n in logical_axes(plain).values())
    a, b = (jax.tree.leaves(nnx.state(m, nnx.Param)) for m in (named, plain))
    assert len(a) == len(b) and all(x.dtype == y.dtype == jnp.bfloat16 for x, y in zip(a, b))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))

    cfg = llava_cfg()
    ids, pixels = llava_inputs(cfg, batch=2, text_len=10)
    mask = np.ones_like(ids)
    h = jax.ShapeDtypeStruct((2, 24, cfg.text.hidden_size), jnp.float32)
    pos, valid = jax.ShapeDtypeStruct((2, 24), jnp.int32), jax.ShapeDtypeStruct((2, 24), bool)

    def lowered(model):
        gd, st = nnx.split(model)
        fwd = jax.jit(lambda s, i, p, k: nnx.merge(gd, s)(i, p, k)).lower(st, ids, pixels, mask).as_text()
        dec = jax.jit(lambda s, h, q, v: nnx.merge(gd, s).language_model(SequenceState(h, q, v)).h)
        return fwd, dec.lower(st, h, pos, valid).as_text()

    assert lowered(named_abstract) == lowered(plain_abstract)


def test_converted_checkpoint_loads_keeps_names_and_generates_as_before(converted_llava):
    c = converted_llava()
    names = logical_axes(c.model)  # restored through nnx.eval_shape + replace_by_pure_dict: names kept
    assert names and all(n is not None for n in names.values())
    assert names["lm_head.kernel"] == ("embed", "vocab")
    ids, pixels = llava_inputs(c.cfg, batch=2, text_len=10)
    out = AutoregressiveGenerator(c.model).generate_arrays(ids, np.ones_like(ids), pixels, max_new_tokens=8, pad_token_id=3)
    np.testing.assert_array_equal(np.asarray(out.tokens), GREEDY_BEFORE)
    # pure-dict round trip (what checkpoint.load does) keeps values and names
    state = nnx.state(c.model, nnx.Param)
    pure = nnx.to_pure_dict(state)
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda x: x + 0, pure))
    assert logical_axes(state) == names
    for x, y in zip(jax.tree.leaves(pure), jax.tree.leaves(nnx.to_pure_dict(state))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_constrain_under_a_mesh_context_only():
    """``axes.constrain``: no constraint without a mesh context; under one, named dimensions take their rule's
    mesh axis (``sequence``, no rule: whole on every device), a non-dividing axis and the trailing dimensions are
    left to the partitioner ({?}), and the values are unchanged."""
    from vtp_jax.sharding import make_mesh, mesh_context

    x = jnp.arange(2 * 6 * 3 * 4, dtype=jnp.float32).reshape(2, 6, 3, 4)
    f = jax.jit(lambda a: axes.constrain(a, axes.KV_CACHE_AXES) * 2)
    g = jax.jit(lambda a: axes.constrain(a, (axes.BATCH, axes.SEQUENCE)) * 2)
    assert "sharding_constraint" not in f.lower(x).as_text()
    mesh = make_mesh("", devices=jax.devices()[:1])
    with mesh_context(mesh):
        assert '[{"data"}, {}, {"tensor"}, {}]' in f.lower(x).as_text()
        assert '[{"data"}, {}, {?}, {?}]' in g.lower(x).as_text()
        np.testing.assert_array_equal(np.asarray(f(x)), np.asarray(x) * 2)
        two = {"batch": ("data", "fsdp"), "kv_heads": "tensor"}  # a tuple of mesh axes splits one dimension
        assert '[{"data", "fsdp"}, {}, {"tensor"}, {}]' in jax.jit(
            lambda a: axes.constrain(a, axes.KV_CACHE_AXES, two)).lower(x).as_text()
    assert "sharding_constraint" not in jax.jit(lambda a: axes.constrain(a, axes.KV_CACHE_AXES)).lower(x).as_text()
