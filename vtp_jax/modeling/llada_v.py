"""LLaDA-V: SigLIP tower (last layer deleted) → ``mlp2x_gelu`` → anyres packing → LLaDA decoder → LM head.

Source: LLaDA-V (ML-GSAI/LLaDA-V, read in Blacktower27/RedVTP-LLaDA-V) ``train/llava/model/llava_arch.py``
(``encode_images`` = tower then projector on every tile; ``prepare_inputs_labels_for_multimodal`` packs tiles with
"anyres_max_N" + "spatial_unpad" + ``image_newline`` and splices them in place of the image placeholder),
``multimodal_encoder/siglip_encoder.py`` (SigLIP so400m, ``del encoder.layers[-1:]``, head → Identity, features =
``hidden_states[-1]`` without the post-layernorm) and ``language_model/llava_llada.py`` (the LLM is LLaDA: Llama blocks
with ``is_causal = False``).

Reused modules: :class:`VisionTower` (``kind="siglip"``), :class:`Projector`, :class:`Decoder` with
``TextConfig(causal=False)`` — the bidirectional block is the Llama block; only the mask differs.

Packing is in :mod:`vtp_jax.modeling.anyres`; its static layout (grid, unpad crop, downsampled size) is computed on the
host from ``image_size`` = (height, width) of the original image, so ``grid`` and ``image_size`` are static Python
values here (hashable; pass them as static arguments under ``jit``): shared by all rows of a batch, or one per row.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vtp_jax.config import LladaVConfig
from vtp_jax.modeling.anyres import AnyresError, pack_features
from vtp_jax.modeling.anyres_vlm import AnyresVisionLanguageModel


class LladaV(AnyresVisionLanguageModel):
    """The LLaDA-V model. Parameter tree: ``vision_tower``, ``multi_modal_projector`` (``linear_1``, ``linear_2``),
    ``image_newline`` [D_text], ``language_model`` (bidirectional :class:`Decoder`), ``lm_head`` (kernel [D, V]).
    Logical axes: ``image_newline`` (embed,), ``lm_head`` (embed, vocab); the rest as in its modules."""

    def __init__(self, cfg: LladaVConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        if cfg.text.causal:
            raise ValueError("LLaDA-V needs a bidirectional text config (TextConfig(causal=False))")
        super().__init__(cfg, dtype=dtype, rngs=rngs)

    # ---- forward pieces ----------------------------------------------------------------------------------------
    def tile_features(self, pixel_values: jax.Array) -> jax.Array:
        """pixel_values float [B, n, 3, S, S] → projected per-tile features [B, n, p², D_text]."""
        b, n = pixel_values.shape[:2]
        flat = pixel_values.reshape((b * n,) + pixel_values.shape[2:])
        feats = self.vision_tower.features(flat, self.cfg.vision_feature_layer)
        feats = self.multi_modal_projector(feats)
        return feats.reshape(b, n, feats.shape[1], feats.shape[2])

    def image_features(
        self, pixel_values: jax.Array, *, grid: Sequence[int] | None = None, image_size: Sequence[int]
    ) -> jax.Array:
        """Visual tokens [B, N_v, D_text] of one image per row.

        pixel_values: float32 [B, n_tiles, 3, S, S] as ``LlavaOnevisionImageProcessor`` returns them (base tile
        first; tiles beyond ``1 + gh·gw`` — the processor's batch padding — are dropped before the tower runs).
        grid: (rows, cols) of tiles (checked against ``image_size``; derived from it when None); image_size:
        (height, width) of the original image. Both static; shared by every row, or one pair per row (images of
        different layouts: rows zero-padded to the batch's largest N_v, see :meth:`row_layouts`).
        """
        layouts = self.row_layouts(image_size, grid, pixel_values.shape[0])
        if layouts is not None:
            tiles = self.tile_features(self.row_tiles(pixel_values, layouts)[None])[0]
            return self.pack_rows(tiles, self.image_newline[...], layouts)
        layout = self.layout(image_size, grid)
        if pixel_values.ndim != 5:
            raise AnyresError(f"pixel_values must be [B, n_tiles, 3, H, W], got shape {tuple(pixel_values.shape)}")
        if pixel_values.shape[1] < layout.num_tiles:
            raise AnyresError(
                f"pixel_values hold {pixel_values.shape[1]} tiles, image size {tuple(image_size)} needs "
                f"{layout.num_tiles}"
            )
        tiles = self.tile_features(pixel_values[:, : layout.num_tiles])
        newline = self.image_newline[...]
        return jax.vmap(lambda t: pack_features(t, newline, layout))(tiles)

    def __call__(
        self,
        input_ids: jax.Array,
        pixel_values: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        grid: Sequence[int] | None = None,
        image_size: Sequence[int],
    ) -> jax.Array:
        """One full bidirectional forward (a denoising step without pruning; parity reference): logits float32
        [B, T, V]. Positions are ``cumsum(attention_mask) − 1``; padding keys are masked for every query."""
        visual = self.image_features(pixel_values, grid=grid, image_size=image_size)
        return self.forward_visual(input_ids, visual, attention_mask)
