"""Qwen2.5-VL vision tower and patch merger (the ``model.visual`` part of Qwen2.5-VL), static-shape for ``jax.jit``.

Source: transformers ``models/qwen2_5_vl/modeling_qwen2_5_vl.py`` — ``Qwen2_5_VisionPatchEmbed``,
``Qwen2_5_VLVisionRotaryEmbedding``, ``Qwen2_5_VLVisionAttention``, ``Qwen2_5_VLVisionBlock``, ``Qwen2_5_VLMLP``,
``Qwen2_5_VLRMSNorm``, ``Qwen2_5_VLPatchMerger`` and ``Qwen2_5_VisionTransformerPretrainedModel.forward`` — with the
index helpers of ``transformers/vision_utils.py`` (``get_vision_position_ids``, ``get_vision_cu_seqlens``,
``get_vision_window_index``); configuration ``Qwen2_5_VLVisionConfig`` (``configuration_qwen2_5_vl.py``).

The forward, as transformers runs it:

1. ``pixel_values`` [N, C·T·P·P] (the processor's flattened patches; rows already grouped in spatial-merge
   blocks of m × m patches, block-major) → patch embedding, a Conv3d whose stride equals its kernel, i.e. one
   matmul with the kernel flattened in (C, T, P, P) order → [N, D].
2. The rows are permuted (in whole merge blocks) into *window order*: per image and per frame, the merged grid
   (h/m × w/m) is tiled by windows of ``window_size // spatial_merge_size // patch_size`` merged units per side
   (row-major over windows; partial windows at the bottom / right edges), row-major inside each window.
3. 2-D axial RoPE from each patch's (row, column) in the patch grid, permuted the same way.
4. ``depth`` pre-RMSNorm blocks (fused-qkv attention with bias, SwiGLU MLP with bias). Blocks listed in
   ``fullatt_block_indexes`` attend within each *frame* (transformers' ``cu_seqlens``: one segment of h·w patches
   per temporal frame, not per image); the others attend within each window (``cu_window_seqlens``).
5. Merger: RMSNorm, groups of m² consecutive rows concatenated → [N/m², m²·D], Linear → GELU → Linear →
   [N/m², out_hidden_size], then un-permuted back to the original (processor) order.

Here the window permutation, the rope positions and the attention segments are computed with NumPy from the static
``grid_thw`` (:func:`vision_layout`); attention is a dense [heads, N, N] product masked block-diagonally by segment
ids (equal ids attend), softmax in float32. Memory is O(heads · N²) per block — fine for the images of a VTP
benchmark (N = a few thousand patches); a chunked / segment-wise kernel can replace it later without changing the
parameters.

Parameter names mirror transformers' (``patch_embed.proj``, ``blocks.{i}.norm1`` / ``norm2`` / ``attn.qkv`` /
``attn.proj`` / ``mlp.gate_proj`` / ``up_proj`` / ``down_proj``, ``merger.ln_q``, ``merger.mlp.0`` /
``merger.mlp.2``) so :func:`vision_params_from_torch` maps them 1:1. Logical axes (:mod:`vtp_jax.modeling.axes`):

==================================  =====================================================================
patch_embed.proj kernel             (channels, vision_embed) — the flattened C·T·P·P conv input; no bias
norm1 / norm2 weight                (vision_embed,)
attn.qkv kernel, bias               (vision_embed, vision_heads), (vision_heads,) — fused [3][heads][head_dim]
attn.proj kernel, bias              (vision_heads, vision_embed), (vision_embed,)
mlp gate_proj / up_proj, down_proj  (vision_embed, vision_mlp), (vision_mlp, vision_embed); biases likewise
merger.ln_q weight                  (vision_embed,)
merger.mlp.0 kernel, bias           (vision_embed, mlp), (mlp,) — input is m²·D (concatenated merge block)
merger.mlp.2 kernel, bias           (mlp, embed), (embed,) — output is the language model's width
==================================  =====================================================================

(the merger follows the LLaVA projector's naming, :class:`vtp_jax.modeling.projector.Projector`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vtp_jax.modeling.axes import CHANNELS, EMBED, MLP, VISION_EMBED, VISION_HEADS, VISION_MLP
from vtp_jax.modeling.layers import ACTIVATIONS, linear, rms_norm
from vtp_jax.modeling.rope import apply_rope

# transformers hard-codes eps=1e-6 for every RMSNorm of the vision tower (Qwen2_5_VLVisionBlock, PatchMerger).
VISION_RMS_EPS = 1e-6

GridTHW = tuple[tuple[int, int, int], ...]

if TYPE_CHECKING:  # the config lives with the family (loading a config needs no model code)
    from vtp_jax.families.qwen2_5_vl.config import Qwen25VisionConfig


# ---- configuration: :class:`vtp_jax.families.qwen2_5_vl.config.Qwen25VisionConfig` ---------------------------


# ---- static layout of a batch of grids (NumPy) -----------------------------------------------------------------


def normalise_grid(grid_thw, spatial_merge_size: int) -> GridTHW:
    """``grid_thw`` as a hashable tuple of (t, h, w) Python ints (accepts lists, tuples, a NumPy / torch array).

    Raises ValueError for an empty grid, an entry that is not three positive integers, or h / w not divisible by
    ``spatial_merge_size``; TypeError for a traced (non-static) array."""
    if isinstance(grid_thw, jax.core.Tracer):
        raise TypeError("grid_thw must be static (a tuple of (t, h, w) tuples), not a traced array")
    if hasattr(grid_thw, "tolist"):
        grid_thw = grid_thw.tolist()
    try:
        rows = [tuple(row) for row in grid_thw]
    except TypeError:
        raise ValueError(f"grid_thw must be a sequence of (t, h, w) triples, got {grid_thw!r}") from None
    if not rows:
        raise ValueError("grid_thw is empty: at least one (t, h, w) entry is needed")
    out = []
    for i, row in enumerate(rows):
        if len(row) != 3 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0
                                for v in row):
            raise ValueError(f"grid_thw[{i}] = {row!r}: expected three positive integers (t, h, w)")
        t, h, w = (int(v) for v in row)
        if h % spatial_merge_size or w % spatial_merge_size:
            raise ValueError(f"grid_thw[{i}] = {(t, h, w)}: h and w must be multiples of spatial_merge_size "
                             f"{spatial_merge_size}")
        out.append((t, h, w))
    return tuple(out)


class VisionLayout(NamedTuple):
    """Static index arrays of one ``grid_thw`` (NumPy, computed once per grid by :func:`vision_layout`).

    N = Σ t·h·w patches, M = N / m² merged tokens.

    window_index: int32 [M] — merged unit ``window_index[j]`` (original order) is the j-th in window order
        (transformers' ``window_index``).
    reverse_index: int32 [M] — ``argsort(window_index)``: window order → original order.
    patch_index: int32 [N] — the same permutation over patch rows (each merged unit's m² rows kept together).
    positions: int32 [N, 2] — (row, column) of each patch in its image's patch grid, in window order (rope).
    frame_segments: int32 [N] — frame id of each patch in window order (full-attention blocks; transformers'
        ``cu_seqlens``).
    window_segments: int32 [N] — window id of each patch in window order (windowed blocks; ``cu_window_seqlens``).
    """

    window_index: np.ndarray
    reverse_index: np.ndarray
    patch_index: np.ndarray
    positions: np.ndarray
    frame_segments: np.ndarray
    window_segments: np.ndarray


@functools.lru_cache(maxsize=64)
def vision_layout(grid_thw: GridTHW, spatial_merge_size: int, merger_window: int) -> VisionLayout:
    """The window permutation, rope positions and attention segments of ``grid_thw`` (see :class:`VisionLayout`).

    Port of transformers ``get_vision_window_index`` / ``get_vision_position_ids`` / ``get_vision_cu_seqlens``
    (``vision_utils.py``). ``grid_thw`` must be normalised (:func:`normalise_grid`); ``merger_window`` is the
    window side in merged units. Window rule: per image and frame, merged unit (r, c) of the (h/m × w/m) grid lies
    in window (r // k, c // k), k = ``merger_window``; windows are taken row-major (the last row / column of
    windows may be partial — transformers pads with -100 and drops the padding, which is the same), units
    row-major within a window. Empty windows (transformers' pad of a whole window when h/m or w/m is a multiple of
    k) contribute nothing, as ``unique_consecutive`` removes them there.
    """
    m, k, mu = spatial_merge_size, merger_window, spatial_merge_size ** 2
    window_index, positions, frames, windows = [], [], [], []
    unit_offset = frame_offset = window_offset = 0
    for t, h, w in grid_thw:
        lh, lw = h // m, w // m
        nwh, nww = -(-lh // k), -(-lw // k)
        r, c = np.meshgrid(np.arange(lh), np.arange(lw), indexing="ij")
        key = np.arange(t)[:, None, None] * (nwh * nww) + ((r // k) * nww + c // k)[None]  # window id, [t, lh, lw]
        key = key.reshape(-1)
        order = np.argsort(key, kind="stable")  # window-major, row-major inside a window (stable sort)
        window_index.append(order + unit_offset)
        windows.append(np.repeat(key[order] + window_offset, mu))
        # (row, col) of each patch, block-major over m × m merge blocks (the processor's row order), per frame
        bh, bw, ih, iw = np.meshgrid(np.arange(lh), np.arange(lw), np.arange(m), np.arange(m), indexing="ij")
        pos = np.stack([(bh * m + ih).reshape(-1), (bw * m + iw).reshape(-1)], axis=-1)  # [h·w, 2]
        positions.append(np.tile(pos, (t, 1)))
        frames.append(np.repeat(np.arange(t) + frame_offset, h * w))
        unit_offset += t * lh * lw
        frame_offset += t
        window_offset += t * nwh * nww
    window_index = np.concatenate(window_index).astype(np.int32)
    patch_index = (window_index[:, None] * mu + np.arange(mu)[None]).reshape(-1).astype(np.int32)
    positions = np.concatenate(positions)[patch_index].astype(np.int32)
    frame_segments = np.concatenate(frames)[patch_index].astype(np.int32)
    window_segments = np.concatenate(windows).astype(np.int32)  # already in window order
    arrays = (window_index, np.argsort(window_index).astype(np.int32), patch_index, positions, frame_segments,
              window_segments)
    for a in arrays:
        a.setflags(write=False)
    return VisionLayout(*arrays)


def axial_inv_frequencies(head_dim: int, theta: float) -> np.ndarray:
    """Inverse frequencies of the 2-D axial rope, float32 [head_dim // 4]: ``1 / θ^(2i / (head_dim/2))`` (one set
    shared by the row and the column axis; transformers ``compute_axial_rope_parameters``)."""
    spatial = head_dim // 2
    return (1.0 / (theta ** (np.arange(0, spatial, 2, dtype=np.float32) / np.float32(spatial)))).astype(np.float32)


def axial_rope(positions: jax.Array, inv_freq: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """cos, sin float32 [N, head_dim] from (row, column) ``positions`` int [N, 2]: angles
    ``[row·f, col·f, row·f, col·f]`` (f = ``inv_freq``, [head_dim/4] each) — transformers
    ``Qwen2_5_VLVisionRotaryEmbedding.forward`` / ``recomposition_frequencies``, for the half-split
    ``rotate_half`` layout of :func:`vtp_jax.modeling.rope.apply_rope`."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [N, 2, head_dim/4]
    half = freqs.reshape(freqs.shape[0], -1)  # [N, head_dim/2]: row freqs then column freqs
    emb = jnp.concatenate([half, half], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


# ---- modules ---------------------------------------------------------------------------------------------------


class PatchEmbed(nnx.Module):
    """Conv3d (kernel = stride = (T, P, P), no bias) over one flattened patch, as a matmul:
    [N, C·T·P·P] → [N, D]. Kernel ``proj.kernel`` [C·T·P·P, D] (rows in (C, T, P, P) order).
    Source: transformers ``Qwen2_5_VisionPatchEmbed``."""

    def __init__(self, cfg: Qwen25VisionConfig, *, dtype, rngs: nnx.Rngs):
        self.proj = linear(cfg.patch_dim, cfg.hidden_size, bias=False, dtype=dtype, rngs=rngs,
                           axes=(CHANNELS, VISION_EMBED))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(x.astype(self.proj.kernel.dtype))


class VisionAttention(nnx.Module):
    """Fused-qkv multi-head self-attention with 2-D rope and a segment mask, [N, D] → [N, D].

    Source: transformers ``Qwen2_5_VLVisionAttention`` (+ ``apply_rotary_pos_emb_vision``): qkv output laid out
    [3][heads][head_dim]; rope applied to q, k in float32; scale head_dim^-0.5; softmax in float32. Tokens attend
    to tokens with the same ``segments`` id (transformers splits at ``cu_seqlens`` instead)."""

    def __init__(self, cfg: Qwen25VisionConfig, *, dtype, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.qkv = linear(d, 3 * d, bias=True, dtype=dtype, rngs=rngs, axes=(VISION_EMBED, VISION_HEADS))
        self.proj = linear(d, d, bias=True, dtype=dtype, rngs=rngs, axes=(VISION_HEADS, VISION_EMBED))

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, segments: jax.Array) -> jax.Array:
        n = x.shape[0]
        qkv = self.qkv(x).reshape(n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # [N, H, hd]
        q = apply_rope(q.astype(jnp.float32)[None], cos[None], sin[None])[0].astype(x.dtype)
        k = apply_rope(k.astype(jnp.float32)[None], cos[None], sin[None])[0].astype(x.dtype)
        scores = jnp.einsum("qhd,khd->hqk", q, k, preferred_element_type=jnp.float32) * (self.head_dim ** -0.5)
        mask = segments[:, None] == segments[None, :]
        scores = jnp.where(mask[None], scores, jnp.finfo(jnp.float32).min)  # every row keeps itself
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        out = jnp.einsum("hqk,khd->qhd", probs, v, preferred_element_type=jnp.float32).astype(x.dtype)
        return self.proj(out.reshape(n, -1))


class VisionMLP(nnx.Module):
    """SwiGLU with biases: ``down_proj(act(gate_proj(x)) · up_proj(x))`` (transformers ``Qwen2_5_VLMLP``,
    ``bias=True``)."""

    def __init__(self, cfg: Qwen25VisionConfig, *, dtype, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = linear(d, f, bias=True, dtype=dtype, rngs=rngs, axes=(VISION_EMBED, VISION_MLP))
        self.up_proj = linear(d, f, bias=True, dtype=dtype, rngs=rngs, axes=(VISION_EMBED, VISION_MLP))
        self.down_proj = linear(f, d, bias=True, dtype=dtype, rngs=rngs, axes=(VISION_MLP, VISION_EMBED))
        self.act = ACTIVATIONS[cfg.hidden_act]

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class VisionBlock(nnx.Module):
    """``x + attn(norm1(x))``, then ``x + mlp(norm2(x))`` (transformers ``Qwen2_5_VLVisionBlock``)."""

    def __init__(self, cfg: Qwen25VisionConfig, *, dtype, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.norm1 = rms_norm(d, eps=VISION_RMS_EPS, dtype=dtype, axis=VISION_EMBED)
        self.norm2 = rms_norm(d, eps=VISION_RMS_EPS, dtype=dtype, axis=VISION_EMBED)
        self.attn = VisionAttention(cfg, dtype=dtype, rngs=rngs)
        self.mlp = VisionMLP(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x, cos, sin, segments):
        x = x + self.attn(self.norm1(x), cos, sin, segments)
        return x + self.mlp(self.norm2(x))


class _GELU(nnx.Module):
    """Exact (erf) GELU, parameter-free: index 1 of ``merger.mlp`` (torch ``nn.GELU()``)."""

    def __call__(self, x):
        return ACTIVATIONS["gelu"](x)


class PatchMerger(nnx.Module):
    """RMSNorm, m² consecutive rows concatenated, Linear → GELU → Linear: [N, D] → [N/m², out_hidden_size].

    Source: transformers ``Qwen2_5_VLPatchMerger`` (``ln_q``, ``mlp`` = Sequential(Linear, GELU, Linear)); the
    ``mlp`` list keeps the Sequential's indices (0, 1 = GELU, 2)."""

    def __init__(self, cfg: Qwen25VisionConfig, *, dtype, rngs: nnx.Rngs):
        wide = cfg.hidden_size * cfg.merge_unit
        self.wide = wide
        self.ln_q = rms_norm(cfg.hidden_size, eps=VISION_RMS_EPS, dtype=dtype, axis=VISION_EMBED)
        self.mlp = nnx.List([
            linear(wide, wide, bias=True, dtype=dtype, rngs=rngs, axes=(VISION_EMBED, MLP)),
            _GELU(),
            linear(wide, cfg.out_hidden_size, bias=True, dtype=dtype, rngs=rngs, axes=(MLP, EMBED)),
        ])

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.ln_q(x).reshape(-1, self.wide)
        for layer in self.mlp:
            x = layer(x)
        return x


class Qwen25VisionTower(nnx.Module):
    """Qwen2.5-VL's vision transformer with its patch merger (transformers
    ``Qwen2_5_VisionTransformerPretrainedModel``, the ``model.visual`` submodule).

    ``tower(pixel_values, grid_thw)`` → float32 [N / m², out_hidden_size], equal to transformers'
    ``visual(pixel_values, grid_thw).pooler_output`` (merged tokens in the processor's order: image by image,
    frame by frame, merged units row-major). Parameters and compute in ``dtype`` (float32 or bfloat16); attention
    softmax and rope in float32.
    """

    def __init__(self, cfg: Qwen25VisionConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg, dtype=dtype, rngs=rngs)
        self.blocks = nnx.List([VisionBlock(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.depth)])
        self.merger = PatchMerger(cfg, dtype=dtype, rngs=rngs)

    def layout(self, grid_thw) -> tuple[GridTHW, VisionLayout]:
        """The normalised grid and its static :class:`VisionLayout` (raises ValueError for an invalid grid)."""
        cfg = self.cfg
        grid = normalise_grid(grid_thw, cfg.spatial_merge_size)
        return grid, vision_layout(grid, cfg.spatial_merge_size, cfg.merger_window)

    def check_inputs(self, pixel_values, grid_thw) -> tuple[GridTHW, VisionLayout]:
        """Validates ``pixel_values`` [Σ t·h·w, C·T·P·P] against ``grid_thw``; returns :meth:`layout`.
        Raises ValueError with the expected and actual shapes."""
        grid, lay = self.layout(grid_thw)
        shape = tuple(pixel_values.shape)
        n = sum(t * h * w for t, h, w in grid)
        if len(shape) != 2:
            raise ValueError(f"pixel_values must be 2-D [patches, C·T·P·P], got shape {shape}")
        if shape[0] != n:
            raise ValueError(f"pixel_values has {shape[0]} patch rows but grid_thw {grid} needs Σ t·h·w = {n}")
        if shape[1] != self.cfg.patch_dim:
            raise ValueError(f"pixel_values rows have {shape[1]} values, expected C·T·P·P = {self.cfg.patch_dim} "
                             f"(in_channels {self.cfg.in_channels}, temporal_patch_size "
                             f"{self.cfg.temporal_patch_size}, patch_size {self.cfg.patch_size})")
        return grid, lay

    def hidden_states(self, pixel_values: jax.Array, grid_thw) -> jax.Array:
        """The last block's output [N, D] (``dtype``) in *window order* — transformers' ``last_hidden_state``
        (which is also left in window order). ``layout(grid_thw).patch_index`` maps it back."""
        cfg = self.cfg
        _, lay = self.check_inputs(pixel_values, grid_thw)
        x = self.patch_embed(pixel_values)[jnp.asarray(lay.patch_index)]
        cos, sin = axial_rope(jnp.asarray(lay.positions), axial_inv_frequencies(cfg.head_dim, cfg.rope_theta))
        frames, windows = jnp.asarray(lay.frame_segments), jnp.asarray(lay.window_segments)
        full = set(cfg.fullatt_block_indexes)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, frames if i in full else windows)
        return x

    def __call__(self, pixel_values: jax.Array, grid_thw) -> jax.Array:
        """Merged visual tokens.

        Args:
          pixel_values: float [Σ t·h·w, C·T·P·P] — the Qwen2.5-VL image processor's ``pixel_values``, unchanged.
          grid_thw: static (t, h, w) per image / video, in patches (the processor's ``image_grid_thw``); a tuple of
            tuples under ``jax.jit`` (static argument); lists / arrays are accepted outside jit.

        Returns:
          float32 [Σ t·h·w / m², out_hidden_size], in the processor's order (transformers' ``pooler_output``).

        Raises:
          ValueError: an invalid grid (h or w not a multiple of ``spatial_merge_size``, non-positive entries) or
            ``pixel_values`` whose shape does not match it.
        """
        _, lay = self.check_inputs(pixel_values, grid_thw)
        merged = self.merger(self.hidden_states(pixel_values, grid_thw))
        return merged[jnp.asarray(lay.reverse_index)].astype(jnp.float32)


# ---- weights from transformers ---------------------------------------------------------------------------------

_PREFIXES = ("model.visual.", "visual.")


def _strip_visual(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    keyed = {}
    for prefix in _PREFIXES:
        keyed = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if keyed:
            return keyed
    return dict(state_dict)  # a bare vision-model state dict (Qwen2_5_VisionTransformerPretrainedModel)


def vision_params_from_torch(state_dict: Mapping[str, Any], cfg: Qwen25VisionConfig) -> dict:
    """transformers' vision weights → the pure parameter dict of :class:`Qwen25VisionTower` (NumPy arrays).

    Args:
      state_dict: name → array (NumPy, or anything ``np.asarray`` reads; convert torch bf16 tensors to float32
        first). Keys ``model.visual.*`` (transformers 5 ``Qwen2_5_VLForConditionalGeneration``), ``visual.*``
        (older checkpoints) or bare (``Qwen2_5_VisionTransformerPretrainedModel.state_dict()``); other keys
        (the language model's) are ignored.
      cfg: the tower's configuration (shapes are checked against it).

    Returns:
      A nested dict like ``nnx.to_pure_dict(nnx.state(tower, nnx.Param))``: conv weight [D, C, T, P, P] →
      ``patch_embed.proj.kernel`` [C·T·P·P, D] (flattened in (C, T, P, P) order, as ``pixel_values`` rows are);
      Linear weights [out, in] transposed to kernels [in, out]; biases and RMSNorm weights unchanged.

    Raises:
      ValueError: missing or unexpected vision keys, or a tensor of the wrong shape.
    """
    sd = _strip_visual(state_dict)
    used: set[str] = set()

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in sd:
            raise ValueError(f"missing vision weight {name!r}")
        a = np.asarray(sd[name])
        if a.shape != shape:
            raise ValueError(f"vision weight {name!r} has shape {a.shape}, expected {shape}")
        used.add(name)
        return a

    def dense(name: str, d_in: int, d_out: int, bias: bool = True) -> dict:
        out = {"kernel": get(f"{name}.weight", (d_out, d_in)).T}
        if bias:
            out["bias"] = get(f"{name}.bias", (d_out,))
        return out

    d, f, wide = cfg.hidden_size, cfg.intermediate_size, cfg.hidden_size * cfg.merge_unit
    conv = get("patch_embed.proj.weight", (d, cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size,
                                           cfg.patch_size))
    params: dict = {"patch_embed": {"proj": {"kernel": conv.reshape(d, -1).T}}, "blocks": {}}
    for i in range(cfg.depth):
        p = f"blocks.{i}"
        params["blocks"][i] = {
            "norm1": {"weight": get(f"{p}.norm1.weight", (d,))},
            "norm2": {"weight": get(f"{p}.norm2.weight", (d,))},
            "attn": {"qkv": dense(f"{p}.attn.qkv", d, 3 * d), "proj": dense(f"{p}.attn.proj", d, d)},
            "mlp": {"gate_proj": dense(f"{p}.mlp.gate_proj", d, f), "up_proj": dense(f"{p}.mlp.up_proj", d, f),
                    "down_proj": dense(f"{p}.mlp.down_proj", f, d)},
        }
    params["merger"] = {"ln_q": {"weight": get("merger.ln_q.weight", (d,))},
                        "mlp": {0: dense("merger.mlp.0", wide, wide),
                                2: dense("merger.mlp.2", wide, cfg.out_hidden_size)}}
    ours = ("patch_embed.", "blocks.", "merger.")
    extra = sorted(k for k in sd if k not in used and k.startswith(ours))
    if extra:
        raise ValueError(f"{len(extra)} unexpected vision weights (config mismatch?): {extra[:8]}")
    return params


def load_hf_vision_weights(tower: Qwen25VisionTower, state_dict: Mapping[str, Any]) -> Qwen25VisionTower:
    """Copies transformers' vision weights (see :func:`vision_params_from_torch`) into ``tower`` in place, cast to
    each parameter's dtype (logical axis metadata kept). Returns ``tower``. Raises ValueError as
    :func:`vision_params_from_torch` does."""
    pure = vision_params_from_torch(state_dict, tower.cfg)
    state = nnx.state(tower, nnx.Param)
    target = nnx.to_pure_dict(state)
    pure = jax.tree.map(lambda new, old: jnp.asarray(new, dtype=old.dtype), pure, target)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(tower, state)
    return tower
