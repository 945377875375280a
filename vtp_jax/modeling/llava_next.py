"""LLaVA-NeXT (LLaVA-1.6): CLIP tower on anyres tiles → ``mlp2x_gelu`` projector → unpadded grid + ``image_newline``
→ Llama / Mistral decoder (causal) → untied LM head.

Source: transformers ``models/llava_next/modeling_llava_next.py`` (5.x): ``LlavaNextModel.get_image_features`` runs
the tower on every tile (the base tile — the whole image resized to one tile — first, then the grid tiles row-major),
takes hidden state ``vision_feature_layer`` and drops the class token ("default"), projects, and
``pack_image_features`` keeps the base tile's p² features, lays the grid tiles out as one (rows·p) × (cols·p) map,
crops the rows / columns that only cover the letterbox padding (``unpad_image``), appends ``image_newline`` after
every row and flattens row-major; the result replaces the image placeholders of ``input_ids`` in order.

That packing is LLaVA-OneVision's without the anyres_max downsample, so it is :mod:`vtp_jax.modeling.anyres`
(``max_num_patches=None``): N_v = p² + h · (w + 1) for the unpadded h × w map (2928 for a 672 × 672 image on
LLaVA-1.6's 336-pixel tiles: 576 + 48 · 49). The layout is static — computed on the host from the image's (height,
width) — so ``image_size`` and ``grid`` are static Python values (hashable; static arguments under ``jit``), shared by
every row of a batch or given per row (images of different layouts in one batch, rows zero-padded to the largest
N_v: :meth:`vtp_jax.modeling.anyres_vlm.AnyresVisionLanguageModel.pack_rows`).

Reused modules: :class:`VisionTower` (CLIP), :class:`Projector`, :class:`Decoder` (causal), the merge and LM head of
:class:`vtp_jax.modeling.llava.VisionLanguageModel`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vtp_jax.modeling.anyres import AnyresError, AnyresLayout, pack_features
from vtp_jax.modeling.anyres_vlm import AnyresVisionLanguageModel


class LlavaNext(AnyresVisionLanguageModel):
    """The LLaVA-NeXT model (``cfg``: :class:`vtp_jax.families.llava_next.config.LlavaNextConfig`).

    Parameter tree: ``vision_tower`` (CLIP), ``multi_modal_projector`` (``linear_1``, ``linear_2``),
    ``image_newline`` [D_text], ``language_model`` (causal :class:`Decoder`), ``lm_head`` (kernel [D, V]).

    Raises ValueError for a non-causal text config or a tower without a class token.
    """

    def __init__(self, cfg, *, dtype=jnp.float32, rngs: nnx.Rngs):
        if not cfg.text.causal:
            raise ValueError("LLaVA-NeXT needs a causal text config")
        if cfg.vision.kind != "clip":
            raise ValueError(f"LLaVA-NeXT needs a CLIP vision tower, got {cfg.vision.kind!r}")
        super().__init__(cfg, dtype=dtype, rngs=rngs)

    def _tiles(self, pixel_values: jax.Array, layout: AnyresLayout, image_size) -> jax.Array:
        """pixel_values [B, n ≥ num_tiles, 3, S, S] → the layout's tiles flattened to [B · num_tiles, 3, S, S]."""
        if pixel_values.ndim != 5:
            raise AnyresError(f"pixel_values must be [B, n_tiles, 3, H, W], got shape {tuple(pixel_values.shape)}")
        if pixel_values.shape[1] < layout.num_tiles:
            raise AnyresError(f"pixel_values hold {pixel_values.shape[1]} tiles, image size {tuple(image_size)} "
                              f"needs {layout.num_tiles}")
        px = pixel_values[:, : layout.num_tiles]  # tiles beyond the layout are the processor's batch padding
        return px.reshape((-1,) + px.shape[2:])

    def _pack(self, tiles: jax.Array, layout: AnyresLayout, newline: jax.Array) -> jax.Array:
        """Per-tile values [B · num_tiles, p², D] → packed [B, N_v, D] (base tile, unpadded grid, newline per row)."""
        per_image = tiles.reshape((-1, layout.num_tiles) + tiles.shape[1:])
        return jax.vmap(lambda t: pack_features(t, newline, layout))(per_image)

    # ---- forward pieces ----------------------------------------------------------------------------------------
    def image_features(
        self, pixel_values: jax.Array, *, image_size: Sequence[int], grid: Sequence[int] | None = None
    ) -> jax.Array:
        """Visual tokens [B, N_v, D_text] of one image per row (``LlavaNextModel.get_image_features``).

        pixel_values: float32 [B, n_tiles, 3, S, S] as ``LlavaNextImageProcessor`` returns them (base tile first;
        tiles beyond ``1 + rows · cols`` are dropped before the tower runs); image_size: (height, width) of the
        original image; grid: (rows, cols) of tiles (checked against ``image_size``; derived from it when None).
        Both static; shared by every row, or one pair per row (images of different layouts: rows zero-padded to the
        batch's largest N_v, see :meth:`row_layouts`). Raises AnyresError for inconsistent inputs.
        """
        layouts = self.row_layouts(image_size, grid, pixel_values.shape[0])
        if layouts is not None:
            flat = self.row_tiles(pixel_values, layouts)
            feats = self.multi_modal_projector(self.vision_tower.features(flat, self.cfg.vision_feature_layer)[:, 1:])
            return self.pack_rows(feats, self.image_newline[...], layouts)
        layout = self.layout(image_size, grid)
        flat = self._tiles(pixel_values, layout, image_size)
        feats = self.vision_tower.features(flat, self.cfg.vision_feature_layer)[:, 1:]  # "default": no class token
        feats = self.multi_modal_projector(feats)
        return self._pack(feats, layout, self.image_newline[...])

    def image_features_with_cls(
        self, pixel_values: jax.Array, *, image_size: Sequence[int], grid: Sequence[int] | None = None,
        cls_layer: int,
    ) -> tuple[jax.Array, jax.Array]:
        """:meth:`image_features` plus each visual token's class-token attention (ToDRE's ``cls`` pivot).

        cls_layer: 1-based vision layer (static) whose head-averaged class-token attention row ``softmax(q_CLS ·
        Kᵀ / √d)`` is read, in every tile. A token's score is its own tile's class-token attention to it (the
        class token's own column dropped, rows not renormalised); ``image_newline`` tokens score 0 (they are no
        patch of any tile). Returns (features [B, N_v, D_text], float32 [B, N_v]); per-row sizes as in
        :meth:`image_features` (padding slots score 0).
        """
        layouts = self.row_layouts(image_size, grid, pixel_values.shape[0])
        if layouts is None:
            layout = self.layout(image_size, grid)
            flat = self._tiles(pixel_values, layout, image_size)
            pack = lambda v, newline: self._pack(v, layout, newline)
        else:
            flat = self.row_tiles(pixel_values, layouts)
            pack = lambda v, newline: self.pack_rows(v, newline, layouts)
        n = self.cfg.vision.num_hidden_layers
        idx = [layer % (n + 1) for layer in self.cfg.vision_feature_layer]
        states, cls_attn = self.vision_tower.hidden_states(flat, max(idx + [cls_layer]), cls_probe_layer=cls_layer)
        feats = jnp.concatenate([states[i] for i in idx], axis=-1)[:, 1:]
        feats = pack(self.multi_modal_projector(feats), self.image_newline[...])
        scores = pack(cls_attn[:, 1:, None].astype(jnp.float32), jnp.zeros((1,), jnp.float32))
        return feats, scores[..., 0]

    def __call__(
        self,
        input_ids: jax.Array,
        pixel_values: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        image_size: Sequence[int],
        grid: Sequence[int] | None = None,
    ) -> jax.Array:
        """Full causal forward without cache or pruning (parity reference): input_ids int [B, T] (N_v placeholders
        per row), pixel_values float32 [B, n_tiles, 3, S, S] → logits float32 [B, T, V]. Positions are
        ``cumsum(attention_mask) − 1`` (what ``generate`` uses); padding keys are masked."""
        visual = self.image_features(pixel_values, image_size=image_size, grid=grid)
        return self.forward_visual(input_ids, visual, attention_mask)
