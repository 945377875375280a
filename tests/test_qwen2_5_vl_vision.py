"""Qwen2.5-VL vision tower + merger (:mod:`vtp_jax.modeling.qwen2_5_vl_vision`) against transformers' PyTorch
``Qwen2_5_VisionTransformerPretrainedModel`` (tiny random fp32 tower, windows that split the grid, two full-
attention blocks), plus static-shape jit caching and input validation."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig  # noqa: E402
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (  # noqa: E402
    Qwen2_5_VisionTransformerPretrainedModel)

from vtp_jax.modeling import axes as axes_lib  # noqa: E402
from vtp_jax.families.qwen2_5_vl.config import Qwen25VisionConfig  # noqa: E402
from vtp_jax.modeling.qwen2_5_vl_vision import (Qwen25VisionTower,  # noqa: E402
                                                 load_hf_vision_weights, vision_layout, vision_params_from_torch)

# head_dim 12 (2-D rope: 3 frequencies per axis), patch 4 → rows of 3·2·4·4 = 96 values, window 16 px = 2 × 2
# merged units, full attention in blocks 1 and 3.
TINY = dict(depth=4, hidden_size=48, num_heads=4, intermediate_size=88, out_hidden_size=40, in_channels=3,
            patch_size=4, temporal_patch_size=2, spatial_merge_size=2, window_size=16, fullatt_block_indexes=[1, 3],
            hidden_act="silu")
# (1, 8, 12): merged 4 × 6, whole 2 × 2 windows (transformers pads a whole empty window here); (1, 6, 4): merged
# 3 × 2, partial windows at the bottom; (1, 10, 6): 5 × 3, partial both ways; (2, 4, 6): two frames (full
# attention is per frame).
GRIDS = [((1, 8, 12), (1, 6, 4)), ((1, 10, 6),), ((2, 4, 6), (1, 6, 4))]


@functools.lru_cache(maxsize=1)
def hf_tower():
    torch.manual_seed(0)
    hf_cfg = Qwen2_5_VLVisionConfig(**TINY)
    hf_cfg._attn_implementation = "eager"
    model = Qwen2_5_VisionTransformerPretrainedModel(hf_cfg).eval()
    with torch.no_grad():  # O(1) features: fan-in scaled weights, norms around 1, non-zero biases
        for name, p in model.named_parameters():
            if "norm" in name or "ln_q" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif p.ndim >= 2:
                p.copy_(torch.randn_like(p) * p[0].numel() ** -0.5)
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return model, hf_cfg


@functools.lru_cache(maxsize=1)
def our_tower():
    model, hf_cfg = hf_tower()
    cfg = Qwen25VisionConfig.from_hf(hf_cfg.to_dict())
    tower = Qwen25VisionTower(cfg, rngs=nnx.Rngs(0))
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    return load_hf_vision_weights(tower, {f"model.visual.{k}": v for k, v in state.items()})


def pixels(grid, seed=0):
    n = sum(t * h * w for t, h, w in grid)
    return np.random.default_rng(seed).standard_normal((n, our_tower().cfg.patch_dim)).astype(np.float32)


def hf_forward(px, grid):
    model, _ = hf_tower()
    with torch.no_grad():
        out = model(torch.from_numpy(px), grid_thw=torch.tensor(grid))
    return out.pooler_output.numpy(), out.last_hidden_state.numpy()


@functools.lru_cache(maxsize=1)
def jitted():
    graphdef, state = nnx.split(our_tower())

    @functools.partial(jax.jit, static_argnums=2)
    def run(state, px, grid):
        return nnx.merge(graphdef, state)(px, grid)

    return functools.partial(run, state), run


def test_config_from_hf():
    _, hf_cfg = hf_tower()
    cfg = Qwen25VisionConfig.from_hf(hf_cfg.to_dict())
    assert (cfg.depth, cfg.hidden_size, cfg.head_dim, cfg.patch_dim, cfg.merger_window) == (4, 48, 12, 96, 2)
    assert cfg.fullatt_block_indexes == (1, 3) and cfg.rope_theta == 10000.0
    # a real checkpoint's vision_config spelling (in_chans, spatial_patch_size, no rope_parameters)
    real = {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
            "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
            "spatial_patch_size": 14, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
            "tokens_per_second": 2, "temporal_patch_size": 2}
    big = Qwen25VisionConfig.from_hf({"vision_config": real})
    assert (big.hidden_size, big.head_dim, big.patch_dim, big.merger_window) == (1280, 80, 1176, 4)


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: "_".join("x".join(map(str, e)) for e in g))
def test_parity_with_transformers(grid):
    px = pixels(grid)
    want, want_hidden = hf_forward(px, grid)
    tower = our_tower()
    got = np.asarray(jitted()[0](jnp.asarray(px), grid))
    n = sum(t * h * w for t, h, w in grid)
    assert got.dtype == np.float32 and got.shape == (n // 4, 40) == want.shape
    assert want.std() > 0.3  # non-trivial features
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    hidden = np.asarray(tower.hidden_states(jnp.asarray(px), grid))  # window order, as transformers leaves it
    np.testing.assert_allclose(hidden, want_hidden, atol=1e-4, rtol=0)


def test_window_layout_matches_transformers():
    from transformers.vision_utils import get_vision_window_index

    for grid in GRIDS:
        want, _ = get_vision_window_index(torch.tensor(grid), spatial_merge_size=2, window_size=16, patch_size=4)
        lay = vision_layout(grid, 2, 2)
        np.testing.assert_array_equal(lay.window_index, want.numpy())
        assert sorted(lay.patch_index.tolist()) == list(range(sum(t * h * w for t, h, w in grid)))


def test_jit_compiles_once_per_grid():
    call, run = jitted()
    grid = ((1, 8, 12), (1, 6, 4))
    before = run._cache_size()
    a = call(jnp.asarray(pixels(grid, seed=1)), grid)
    b = call(jnp.asarray(pixels(grid, seed=2)), grid)
    assert run._cache_size() - before <= 1 and run._cache_size() >= 1
    assert not np.allclose(np.asarray(a), np.asarray(b))
    sizes = run._cache_size()
    call(jnp.asarray(pixels(grid, seed=3)), tuple(tuple(g) for g in grid))  # equal tuple: same entry
    assert run._cache_size() == sizes


def test_fresh_jit_cache_size_is_one():
    graphdef, state = nnx.split(our_tower())
    run = jax.jit(lambda s, px, g: nnx.merge(graphdef, s)(px, g), static_argnums=2)
    grid = ((1, 6, 4),)
    run(state, jnp.asarray(pixels(grid, seed=4)), grid)
    run(state, jnp.asarray(pixels(grid, seed=5)), grid)
    assert run._cache_size() == 1


def test_invalid_inputs_raise():
    tower = our_tower()
    grid = ((1, 6, 4),)
    with pytest.raises(ValueError, match="multiples of spatial_merge_size"):
        tower(jnp.zeros((5 * 4, 96)), ((1, 5, 4),))
    with pytest.raises(ValueError, match="patch rows but grid_thw"):
        tower(jnp.zeros((23, 96)), grid)
    with pytest.raises(ValueError, match="C·T·P·P = 96"):
        tower(jnp.zeros((24, 95)), grid)
    with pytest.raises(ValueError, match="three positive integers"):
        tower(jnp.zeros((24, 96)), ((0, 6, 4),))
    with pytest.raises(ValueError, match="empty"):
        tower(jnp.zeros((0, 96)), ())


def test_loader_rejects_mismatch_and_axes_named():
    model, _ = hf_tower()
    cfg = our_tower().cfg
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    params = vision_params_from_torch({f"visual.{k}": v for k, v in sd.items()}, cfg)
    np.testing.assert_array_equal(params["patch_embed"]["proj"]["kernel"],
                                  sd["patch_embed.proj.weight"].reshape(48, -1).T)
    bad = dict(sd)
    del bad["blocks.2.attn.qkv.bias"]
    with pytest.raises(ValueError, match="missing vision weight 'blocks.2.attn.qkv.bias'"):
        vision_params_from_torch(bad, cfg)
    with pytest.raises(ValueError, match="unexpected vision weights"):
        vision_params_from_torch({**sd, "blocks.4.norm1.weight": sd["blocks.0.norm1.weight"]}, cfg)
    names = axes_lib.logical_axes(our_tower())
    assert all(v is not None and len(v) > 0 for v in names.values())
    assert names["patch_embed.proj.kernel"] == ("channels", "vision_embed")
    assert names["blocks.0.attn.qkv.kernel"] == ("vision_embed", "vision_heads")
    assert names["merger.mlp.2.kernel"] == ("mlp", "embed")
    assert set(names) >= {"merger.ln_q.weight", "merger.mlp.0.bias", "blocks.3.mlp.down_proj.kernel"}
