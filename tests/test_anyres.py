"""The anyres_max_N / spatial_unpad tiling rules of :mod:`vtp_jax.modeling.anyres` against transformers' LLaVA-OneVision
functions: best-resolution choice, grid shape, unpadding crop, downsample size, token count, bilinear resize and the
full packing (with newline) on random features."""

from __future__ import annotations

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vtp_jax.config import ConfigError, parse_grid_pinpoints
from vtp_jax.modeling import anyres

torch = pytest.importorskip("torch")
from transformers.image_processing_utils import select_best_resolution as hf_select  # noqa: E402
from transformers.models.llava_onevision import modeling_llava_onevision as hf_ov  # noqa: E402
from transformers.models.llava_onevision.processing_llava_onevision import LlavaOnevisionProcessor  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

REAL = dict(tile=384, p=27, pinpoints=[[i * 384, j * 384] for i in range(1, 7) for j in range(1, 7)])
TINY = dict(tile=32, p=4, pinpoints=[[i * 32, j * 32] for i in range(1, 4) for j in range(1, 4)])


def _sizes(seed: int, n: int, hi: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    fixed = [(1, 1), (384, 384), (383, 385), (100, 2000), (2000, 100), (768, 1536), (333, 500), (1080, 1920),
             (7, 3000), (3000, 7), (50, 90), (90, 50), (64, 64), (33, 97)]
    return fixed + [tuple(int(v) for v in rng.integers(1, hi, 2)) for _ in range(n)]


@pytest.mark.parametrize("setup", [REAL, TINY], ids=["llada_v", "tiny"])
def test_best_resolution_and_grid(setup):
    for size in _sizes(0, 300, 2500):
        ref = tuple(hf_select(list(size), setup["pinpoints"]))
        assert anyres.select_best_resolution(size, setup["pinpoints"]) == ref
        ours = anyres.grid_shape(size, setup["pinpoints"], setup["tile"])
        ref = hf_ov.get_anyres_image_grid_shape(list(size), setup["pinpoints"], setup["tile"])
        assert ours == tuple(ref), size


@pytest.mark.parametrize("setup", [REAL, TINY], ids=["llada_v", "tiny"])
def test_unpad_crop_matches_unpad_image(setup):
    p = setup["p"]
    for size in _sizes(1, 300, 2500):
        gh, gw = anyres.grid_shape(size, setup["pinpoints"], setup["tile"])
        h, w = gh * p, gw * p
        # Encode (row, col) in the values so the crop offsets are checked too, not only the shape.
        fmap = torch.arange(h * w, dtype=torch.float64).reshape(1, h, w)
        ref = hf_ov.unpad_image(fmap, list(size))[0].numpy()
        (r0, r1), (c0, c1) = anyres.unpad_crop(size, (h, w))
        np.testing.assert_array_equal(np.arange(h * w).reshape(h, w)[r0:r1, c0:c1], ref, err_msg=str(size))


def _fake_processor(setup, max_num_patches):
    fake = types.SimpleNamespace(
        image_processor=types.SimpleNamespace(image_grid_pinpoints=setup["pinpoints"]),
        num_image_tokens=setup["p"] ** 2,
        vision_aspect_ratio=f"anyres_max_{max_num_patches}",
    )
    fake._get_unpadded_features = types.MethodType(LlavaOnevisionProcessor._get_unpadded_features, fake)
    return fake


@pytest.mark.parametrize("setup", [REAL, TINY], ids=["llada_v", "tiny"])
@pytest.mark.parametrize("max_num_patches", [1, 4, 9])
def test_token_count_matches_processor(setup, max_num_patches):
    """N_v (base + rows·(cols + 1) after the downsample) equals what LlavaOnevisionProcessor expands <image> to."""
    fake = _fake_processor(setup, max_num_patches)
    downsampled = 0
    for size in _sizes(2, 200, 2500):
        layout = anyres.anyres_layout(size, pinpoints=setup["pinpoints"], tile_size=setup["tile"],
                                      patches_per_side=setup["p"], max_num_patches=max_num_patches)
        ref = LlavaOnevisionProcessor._get_number_of_features(fake, size[0], size[1], setup["tile"], setup["tile"])
        assert layout.num_tokens == ref, (size, layout)
        downsampled += layout.downsampled
    max_tiles = max(h * w for h, w in setup["pinpoints"]) // setup["tile"] ** 2
    if max_tiles > 1.21 * max_num_patches:
        assert downsampled > 0  # the anyres_max path is exercised


def test_downsampled_size_rule():
    # 2×2 grid of 4×4 tiles, N = 1: ratio = sqrt(64 / 16) = 2 → 4×4
    assert anyres.downsampled_size((8, 8), 4, 1) == (4, 4)
    # ratio exactly 1.1² boundary: stays when ratio ≤ 1.1
    assert anyres.downsampled_size((4, 4), 4, 1) == (4, 4)
    assert anyres.downsampled_size((100, 7), 4, None) == (100, 7)
    h, w = 19, 12
    ratio = math.sqrt(h * w / (1 * 16))
    assert anyres.downsampled_size((h, w), 4, 1) == (int(h // ratio), int(w // ratio))


@pytest.mark.parametrize("hw,out", [((54, 81), (32, 48)), ((20, 30), (13, 19)), ((12, 12), (7, 7)),
                                    ((81, 27), (45, 15)), ((9, 30), (6, 20)), ((5, 5), (5, 5))])
def test_bilinear_resize_matches_torch_interpolate(hw, out):
    x = np.random.default_rng(3).standard_normal(hw + (6,)).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x).permute(2, 0, 1)[None], list(out), mode="bilinear")
    ref = ref[0].permute(1, 2, 0).numpy()
    ours = np.asarray(anyres.bilinear_resize(jnp.asarray(x), out))
    assert np.abs(ours - ref).max() <= 1e-5


def _hf_pack(setup, features, size, newline, max_num_patches):
    cfg = types.SimpleNamespace(
        vision_config=types.SimpleNamespace(image_size=setup["tile"], patch_size=setup["tile"] // setup["p"]),
        image_grid_pinpoints=setup["pinpoints"],
    )
    fake = types.SimpleNamespace(config=cfg)
    packed, lens = hf_ov.LlavaOnevisionModel.pack_image_features(
        fake, [torch.from_numpy(features)], torch.tensor([list(size)]), image_newline=torch.from_numpy(newline),
        vision_aspect_ratio=f"anyres_max_{max_num_patches}")
    return packed[0].numpy()


@pytest.mark.parametrize("max_num_patches", [1, 2, 4])
def test_pack_features_matches_transformers(max_num_patches):
    setup, d = TINY, 8
    rng = np.random.default_rng(4)
    newline = rng.standard_normal(d).astype(np.float32)
    seen = set()
    for size in [(50, 90), (90, 50), (64, 64), (30, 31), (96, 40), (33, 97), (200, 210), (12, 300), (95, 64)]:
        layout = anyres.anyres_layout(size, pinpoints=setup["pinpoints"], tile_size=setup["tile"],
                                      patches_per_side=setup["p"], max_num_patches=max_num_patches)
        feats = rng.standard_normal((layout.num_tiles, setup["p"] ** 2, d)).astype(np.float32)
        ref = _hf_pack(setup, feats, size, newline, max_num_patches)
        extra = rng.standard_normal((2,) + feats.shape[1:]).astype(np.float32)  # like the processor's batch padding
        padded = np.concatenate([feats, extra])
        ours = np.asarray(jax.jit(anyres.pack_features, static_argnums=2)(padded, newline, layout))
        assert ours.shape == ref.shape == (layout.num_tokens, d), (size, ours.shape, ref.shape)
        assert np.abs(ours - ref).max() <= 1e-5, size
        seen.add(layout.downsampled)
    assert seen == {True, False} or max_num_patches == 4


def test_pack_features_rejects_bad_inputs():
    layout = anyres.anyres_layout((50, 90), pinpoints=TINY["pinpoints"], tile_size=32, patches_per_side=4,
                                  max_num_patches=4)
    with pytest.raises(anyres.AnyresError):
        anyres.pack_features(jnp.zeros((layout.num_tiles - 1, 16, 8)), jnp.zeros(8), layout)
    with pytest.raises(anyres.AnyresError):
        anyres.pack_features(jnp.zeros((layout.num_tiles, 9, 8)), jnp.zeros(8), layout)


def test_legacy_unpad_truncates():
    # LLaDA-V's llava_arch.unpad_image uses int(x); transformers int(round(x, 7)). They agree except where x falls
    # a rounding error below an integer; both are available, the default is transformers'.
    # 820×738 on a 3×2 grid of 27-patch tiles (81×54 features): x = 820 · 54 / 738 = 59.99999999999999 in floats.
    # Truncation: new_h = 59, pad = (81 − 59) // 2 = 11 → rows [11, 70); rounding: new_h = 60, pad = 10 → [10, 71).
    assert anyres.grid_shape((820, 738), [(j * 384, i * 384) for i in range(1, 7) for j in range(1, 7)], 384) == (3, 2)
    assert anyres.unpad_crop((820, 738), (81, 54)) == ((10, 71), (0, 54))
    assert anyres.unpad_crop((820, 738), (81, 54), legacy_unpad=True) == ((11, 70), (0, 54))
    # The width branch: a 49×49 image on 27×54 features: x = 49 · (27 / 49) = 26.999999999999996 → new_w 26 (pad 14,
    # columns [14, 40)) truncated, 27 (pad 13, columns [13, 41)) rounded.
    assert anyres.unpad_crop((49, 49), (27, 54)) == ((0, 27), (13, 41))
    assert anyres.unpad_crop((49, 49), (27, 54), legacy_unpad=True) == ((0, 27), (14, 40))
    pins = [(j * 384, i * 384) for i in range(1, 7) for j in range(1, 7)]
    differ = []
    for h in range(1, 1200, 7):
        for w in range(1, 1200, 11):
            g = anyres.grid_shape((h, w), pins, 384)
            a = anyres.unpad_crop((h, w), (g[0] * 27, g[1] * 27))
            b = anyres.unpad_crop((h, w), (g[0] * 27, g[1] * 27), legacy_unpad=True)
            if a != b:
                differ.append((h, w))
    assert differ == [(820, 738)]  # the only size of this sweep where the two rules disagree


def test_parse_grid_pinpoints():
    pins = parse_grid_pinpoints("(1x1),...,(6x6)", 384)
    assert len(pins) == 36 and set(pins) == {(i * 384, j * 384) for i in range(1, 7) for j in range(1, 7)}
    assert pins[:3] == ((384, 384), (768, 384), (1152, 384))  # LLaDA-V's (w, h) iteration order, as (h, w)
    assert parse_grid_pinpoints([[32, 64], [64, 32]], 32) == ((32, 64), (64, 32))
    assert parse_grid_pinpoints("[[32, 64]]", 32) == ((32, 64),)
    for bad in ("(1x1", [[33, 64]], 5, []):
        with pytest.raises(ConfigError):
            parse_grid_pinpoints(bad, 32)
