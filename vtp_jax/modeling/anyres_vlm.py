"""What the anyres VLMs share (LLaDA-V, LLaVA-NeXT): the parameter tree — vision tower, projector,
``image_newline``, decoder, untied LM head — and the host-side packing layout of an image.

The anyres rules themselves (tiles, unpadding, newline packing) are in :mod:`vtp_jax.modeling.anyres`.

Images of different layouts in one batch: ``image_size`` may be one (height, width) pair per row (and ``grid`` one
(rows, cols) pair per row). The tower then runs once over every row's own tiles, each row is packed with its own
layout and the rows are zero-padded to the batch's largest visual-token count N (:meth:`pack_rows`); the prompt's
visual spans are padded to match by the generators (:func:`vtp_jax.generation.visual_spans.pad_visual_spans`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vtp_jax.modeling.anyres import AnyresError, AnyresLayout, layout_for_config, pack_features
from vtp_jax.modeling.axes import EMBED, VOCAB, param
from vtp_jax.modeling.decoder import Decoder
from vtp_jax.modeling.layers import linear
from vtp_jax.modeling.llava import VisionLanguageModel
from vtp_jax.modeling.projector import Projector
from vtp_jax.modeling.vision import VisionTower


class AnyresVisionLanguageModel(VisionLanguageModel):
    """Parameter tree: ``vision_tower``, ``multi_modal_projector`` (``linear_1``, ``linear_2``), ``image_newline``
    [D_text], ``language_model`` (:class:`Decoder`, causal or not as ``cfg.text`` says), ``lm_head`` (kernel
    [D, V]). Logical axes: ``image_newline`` (embed,), ``lm_head`` (embed, vocab); the rest as in its modules.

    ``cfg`` needs ``vision``, ``text``, ``vision_feature_layer``, ``projector_hidden_act``, ``projector_bias`` and
    the tiling fields :func:`vtp_jax.modeling.anyres.layout_for_config` reads. Subclasses check their family's
    constraints before calling this constructor.
    """

    def __init__(self, cfg, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        self.vision_tower = VisionTower(cfg.vision, dtype=dtype, rngs=rngs)
        d_in = cfg.vision.hidden_size * len(cfg.vision_feature_layer)
        d = cfg.text.hidden_size
        self.multi_modal_projector = Projector(
            d_in, d, act=cfg.projector_hidden_act, bias=cfg.projector_bias, dtype=dtype, rngs=rngs
        )
        self.image_newline = param(jax.random.normal(rngs.params(), (d,), dtype) * d**-0.5, (EMBED,))
        self.language_model = Decoder(cfg.text, dtype=dtype, rngs=rngs)
        self.lm_head = linear(d, cfg.text.vocab_size, bias=False, dtype=dtype, rngs=rngs, axes=(EMBED, VOCAB))

    # ---- host-side layout ---------------------------------------------------------------------------------------
    def layout(self, image_size: Sequence[int], grid: Sequence[int] | None = None) -> AnyresLayout:
        """The static packing layout of an image of (height, width) ``image_size`` (Python ints); checks ``grid``
        (rows, cols) if given. Raises AnyresError for a bad size or a grid that does not match it."""
        layout = layout_for_config(self.cfg, tuple(int(v) for v in image_size))
        if grid is not None and tuple(int(g) for g in grid) != layout.grid:
            raise AnyresError(
                f"grid {tuple(grid)} does not match image size {tuple(image_size)} (expected {layout.grid})"
            )
        return layout

    def num_visual_tokens(self, image_size: Sequence[int]) -> int:
        """N_v of an image of (height, width) ``image_size`` (what the family's processor expands ``<image>``
        to)."""
        return self.layout(image_size).num_tokens

    # ---- one layout per row ---------------------------------------------------------------------------------------
    def row_layouts(self, image_size, grid, batch: int) -> tuple[AnyresLayout, ...] | None:
        """None when ``image_size`` is one (height, width) pair shared by the batch; else one layout per row from
        ``image_size`` (B pairs) and ``grid`` (None or B (rows, cols) pairs). Raises AnyresError for a count that is
        not the batch size or a grid that does not match its size."""
        if not (len(image_size) and isinstance(image_size[0], (tuple, list))):
            return None
        grids = (None,) * len(image_size) if grid is None else tuple(grid)
        if len(image_size) != batch or len(grids) != batch:
            raise AnyresError(f"{len(image_size)} image sizes and {len(grids)} grids for a batch of {batch} rows")
        return tuple(self.layout(size, g) for size, g in zip(image_size, grids))

    @staticmethod
    def row_tiles(pixel_values: jax.Array, layouts: Sequence[AnyresLayout]) -> jax.Array:
        """pixel_values [B, n ≥ max tiles, 3, S, S] → every row's own tiles, concatenated: [Σ_b tiles_b, 3, S, S]
        (tiles beyond a row's layout are the processor's batch padding). Raises AnyresError for a short row."""
        if pixel_values.ndim != 5:
            raise AnyresError(f"pixel_values must be [B, n_tiles, 3, H, W], got shape {tuple(pixel_values.shape)}")
        need = max(lay.num_tiles for lay in layouts)
        if pixel_values.shape[1] < need:
            raise AnyresError(f"pixel_values hold {pixel_values.shape[1]} tiles, the batch's layouts need {need}")
        return jnp.concatenate([pixel_values[b, : lay.num_tiles] for b, lay in enumerate(layouts)], axis=0)

    @staticmethod
    def pack_rows(per_tile: jax.Array, newline: jax.Array, layouts: Sequence[AnyresLayout]) -> jax.Array:
        """Per-tile values [Σ_b tiles_b, p², C] (in :meth:`row_tiles` order) → [B, N, C]: row b packed with its own
        layout (N_v[b] tokens), then zeros up to N = max_b N_v[b]."""
        n_max = max(lay.num_tokens for lay in layouts)
        rows, start = [], 0
        for lay in layouts:
            packed = pack_features(per_tile[start : start + lay.num_tiles], newline, lay)
            start += lay.num_tiles
            rows.append(jnp.pad(packed, ((0, n_max - lay.num_tokens), (0, 0))))
        return jnp.stack(rows)
