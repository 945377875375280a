"""LLaVA-OneVision "anyres_max_N" tiling with "spatial_unpad" packing and a learned newline (LLaDA-V's image layout).

An image of size (H, W) is resized into the best grid of tiles (``select_best_resolution`` over the grid pinpoints)
and cut into ``gh × gw`` tiles of ``tile_size`` pixels; a resized copy of the whole image (the *base* tile) comes
first. Each tile becomes ``p × p`` features (p = tile_size / patch_size). The model then

1. keeps the base tile's ``p²`` features as they are;
2. lays the grid tiles out as one ``(gh·p) × (gw·p)`` feature map;
3. *unpads* it: crops the rows (or columns) that only cover the letterbox padding of the resized image;
4. if the unpadded map holds more than ``1.1² · N · p²`` features ("anyres_max_N"), downsamples it bilinearly to
   ``(⌊h / r⌋, ⌊w / r⌋)`` with ``r = sqrt(h·w / (N·p²))``;
5. appends the ``image_newline`` vector after every row and flattens row-major.

So ``N_v = p² + h_out · (w_out + 1)``.

Static shapes: the grid, the crop and the output size are Python ints computed **on the host** from the image size
(:func:`anyres_layout`). :func:`pack_features` closes over them, so under ``jit`` each distinct layout (grid, unpad
crop, output size) compiles once; rows of one batch must share a layout.

Sources (reproduced rule by rule, checked against them in ``tests/test_anyres.py``): transformers
``models/llava_onevision/modeling_llava_onevision.py`` (``get_anyres_image_grid_shape``, ``unpad_image``,
``LlavaOnevisionModel.pack_image_features``), ``image_processing_utils.select_best_resolution`` and
``LlavaOnevisionProcessor._get_unpadded_features`` (token count); LLaDA-V ``train/llava/model/llava_arch.py`` and
``train/llava/mm_utils.py`` (the same algorithm).

Conventions and the one known difference from LLaDA-V's own code:
  * Sizes are (height, width) everywhere, as in transformers (LLaDA-V's code passes PIL ``image.size`` = (width,
    height) and reads pinpoints as (width, height); with its symmetric pinpoint grid the result is the same).
  * Unpadding: transformers computes the kept size as ``int(round(x, 7))``; LLaDA-V's ``unpad_image`` truncates
    ``int(x)``. They differ only when ``x`` lands a rounding error below an integer. ``legacy_unpad=True`` selects
    LLaDA-V's truncation; the default follows transformers (which the processor's token count also uses).
  * The bilinear downsample is ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` without
    antialiasing, reproduced exactly (source index ``scale·(dst + 0.5) − 0.5`` in float32, clamped at 0) as two
    static interpolation matrices; ``jax.image.resize`` is *not* used (its antialiasing and edge normalisation differ
    from torch's).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


class AnyresError(ValueError):
    """Inconsistent tiling input (wrong tile count, grid not matching the image size…)."""


def select_best_resolution(image_size: Sequence[int], pinpoints: Sequence[Sequence[int]]) -> tuple[int, int]:
    """The pinpoint (height, width) that keeps the most of the image's resolution, then wastes the least.

    image_size: (height, width) of the original image; pinpoints: candidate (height, width) resolutions, tried in
    order (the first of equal candidates wins). Same rule as transformers' ``select_best_resolution``.
    """
    h0, w0 = int(image_size[0]), int(image_size[1])
    best, best_eff, best_waste = None, 0, float("inf")
    for h, w in pinpoints:
        scale = min(w / w0, h / h0)
        eff = min(int(w0 * scale) * int(h0 * scale), w0 * h0)
        waste = w * h - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (int(h), int(w)), eff, waste
    if best is None:
        raise AnyresError(f"no grid pinpoint fits image size {tuple(image_size)}")
    return best


def grid_shape(image_size: Sequence[int], pinpoints: Sequence[Sequence[int]], tile_size: int) -> tuple[int, int]:
    """(rows, cols) of tiles for an image of (height, width) ``image_size``.

    Transformers' ``get_anyres_image_grid_shape`` (which also returns (height, width) order)."""
    h, w = select_best_resolution(image_size, pinpoints)
    return h // tile_size, w // tile_size


def unpad_crop(
    image_size: Sequence[int], feature_hw: Sequence[int], *, legacy_unpad: bool = False
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Rows [r0, r1) and columns [c0, c1) of a ``feature_hw`` feature map that cover the image (not its padding).

    Transformers' ``unpad_image`` rule; ``legacy_unpad`` truncates instead of rounding (LLaDA-V's ``llava_arch``).
    """
    oh, ow = int(image_size[0]), int(image_size[1])
    ch, cw = int(feature_hw[0]), int(feature_hw[1])
    if ow / oh > cw / ch:
        x = oh * (cw / ow)
        new_h = int(x) if legacy_unpad else int(round(x, 7))
        pad = (ch - new_h) // 2
        return (pad, ch - pad), (0, cw)
    x = ow * (ch / oh)
    new_w = int(x) if legacy_unpad else int(round(x, 7))
    pad = (cw - new_w) // 2
    return (0, ch), (pad, cw - pad)


def downsampled_size(hw: Sequence[int], patches_per_side: int, max_num_patches: int | None) -> tuple[int, int]:
    """Feature-map size after the anyres_max_N rule (unchanged unless it holds > 1.1²·N tiles' worth)."""
    h, w = int(hw[0]), int(hw[1])
    if max_num_patches is None:
        return h, w
    ratio = math.sqrt(h * w / (max_num_patches * patches_per_side**2))
    if ratio > 1.1:
        return int(h // ratio), int(w // ratio)
    return h, w


@dataclasses.dataclass(frozen=True)
class AnyresLayout:
    """Everything static about one image's packing (hashable; closed over by jitted code).

    grid: (rows, cols) of tiles after the base tile; patches_per_side: p; rows / cols: the unpadded crop of the
    (rows·p) × (cols·p) feature map; out: feature-map size after the anyres_max downsample.
    """

    grid: tuple[int, int]
    patches_per_side: int
    rows: tuple[int, int]
    cols: tuple[int, int]
    out: tuple[int, int]

    @property
    def num_tiles(self) -> int:
        """Tiles the processor yields: the base tile plus the grid."""
        return 1 + self.grid[0] * self.grid[1]

    @property
    def unpadded(self) -> tuple[int, int]:
        return self.rows[1] - self.rows[0], self.cols[1] - self.cols[0]

    @property
    def downsampled(self) -> bool:
        return self.out != self.unpadded

    @property
    def num_tokens(self) -> int:
        """N_v: base tile + every row of the (downsampled) map followed by one newline."""
        return self.patches_per_side**2 + self.out[0] * (self.out[1] + 1)


def anyres_layout(
    image_size: Sequence[int],
    *,
    pinpoints: Sequence[Sequence[int]],
    tile_size: int,
    patches_per_side: int,
    max_num_patches: int | None,
    legacy_unpad: bool = False,
) -> AnyresLayout:
    """The :class:`AnyresLayout` of an image of (height, width) ``image_size`` (host-side, Python ints)."""
    if len(image_size) != 2 or min(int(image_size[0]), int(image_size[1])) < 1:
        raise AnyresError(f"image_size must be a positive (height, width), got {tuple(image_size)}")
    gh, gw = grid_shape(image_size, pinpoints, tile_size)
    p = patches_per_side
    rows, cols = unpad_crop(image_size, (gh * p, gw * p), legacy_unpad=legacy_unpad)
    out = downsampled_size((rows[1] - rows[0], cols[1] - cols[0]), p, max_num_patches)
    return AnyresLayout((gh, gw), p, rows, cols, out)


def layout_for_config(cfg, image_size: Sequence[int], *, legacy_unpad: bool = False) -> AnyresLayout:
    """:func:`anyres_layout` with the tiling parameters of a :class:`vtp_jax.config.LladaVConfig`."""
    return anyres_layout(
        image_size,
        pinpoints=cfg.image_grid_pinpoints,
        tile_size=cfg.tile_size,
        patches_per_side=cfg.patches_per_side,
        max_num_patches=cfg.max_num_patches,
        legacy_unpad=legacy_unpad,
    )


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """float32 [out_size, in_size] weights of torch's 1-D linear interpolation (``align_corners=False``, no
    antialias, size given): ``src = (in/out)·(dst + 0.5) − 0.5`` in float32, clamped at 0; neighbours
    ``floor(src)`` and ``floor(src) + 1`` (clamped to the last index)."""
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float32)
    src = scale * (dst + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0)).astype(np.float32)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    lam1 = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
    lam0 = (np.float32(1.0) - lam1).astype(np.float32)
    i1 = np.where(i0 < in_size - 1, i0 + 1, i0)
    m = np.zeros((out_size, in_size), np.float32)
    rows = np.arange(out_size)
    np.add.at(m, (rows, i0), lam0)
    np.add.at(m, (rows, i1), lam1)
    return m


def bilinear_resize(x: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
    """Resizes a feature map [H, W, D] to [out_h, out_w, D] like torch's bilinear ``interpolate`` (computed in
    float32, returned in x's dtype)."""
    mh = jnp.asarray(bilinear_matrix(x.shape[0], out_hw[0]))
    mw = jnp.asarray(bilinear_matrix(x.shape[1], out_hw[1]))
    y = jnp.einsum("oh,hwd->owd", mh, x.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
    y = jnp.einsum("pw,owd->opd", mw, y, precision=jax.lax.Precision.HIGHEST)
    return y.astype(x.dtype)


def pack_features(tile_features: jax.Array, newline: jax.Array, layout: AnyresLayout) -> jax.Array:
    """Packs one image's per-tile features into its visual token sequence (jittable, static shapes).

    tile_features: [n_tiles, p², D] (base tile first, then the grid row-major; extra padding tiles beyond
    ``layout.num_tiles`` are ignored); newline: [D]. Returns [layout.num_tokens, D] in tile_features' dtype.
    """
    n, pp, d = tile_features.shape
    p = layout.patches_per_side
    if pp != p * p:
        raise AnyresError(f"tile features hold {pp} tokens per tile, the layout expects {p * p}")
    if n < layout.num_tiles:
        raise AnyresError(f"{n} tiles given, grid {layout.grid} needs {layout.num_tiles} (base + grid)")
    base = tile_features[0]
    gh, gw = layout.grid
    fmap = tile_features[1 : 1 + gh * gw].reshape(gh, gw, p, p, d)
    fmap = fmap.transpose(0, 2, 1, 3, 4).reshape(gh * p, gw * p, d)  # (tile row, patch row, tile col, patch col)
    fmap = fmap[layout.rows[0] : layout.rows[1], layout.cols[0] : layout.cols[1]]
    if layout.downsampled:
        fmap = bilinear_resize(fmap, layout.out)
    h = fmap.shape[0]
    nl = jnp.broadcast_to(newline.astype(fmap.dtype), (h, 1, d))
    fmap = jnp.concatenate([fmap, nl], axis=1).reshape(h * (fmap.shape[1] + 1), d)
    return jnp.concatenate([base, fmap], axis=0)
