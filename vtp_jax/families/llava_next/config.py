"""LLaVA-NeXT's config: Hugging Face ``config.json`` (``model_type`` ``llava_next``) → :class:`LlavaNextConfig`.

Source: transformers ``models/llava_next/configuration_llava_next.py`` (5.x): ``LlavaNextConfig`` is
``LlavaConfig``'s fields (CLIP ``vision_config``, Llama / Mistral ``text_config``, ``image_token_index``,
``vision_feature_layer``, ``vision_feature_select_strategy``, ``projector_hidden_act``, ``multimodal_projector_bias``,
``tie_word_embeddings``) plus ``image_grid_pinpoints``: candidate (height, width) resolutions in pixels, default
``[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]``.

Every field shared with LLaVA is read and validated by :func:`vtp_jax.config.llava_config_from_hf` (so a bad field is
named exactly as for LLaVA); the pinpoints by :func:`vtp_jax.config.parse_grid_pinpoints`.
"""

from __future__ import annotations

import dataclasses

from vtp_jax.config import (
    ConfigError, LlavaConfig, TextConfig, VisionConfig, llava_config_from_hf, parse_grid_pinpoints,
)

DEFAULT_GRID_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))  # transformers' default


@dataclasses.dataclass(frozen=True)
class LlavaNextConfig:
    """LLaVA-NeXT (LLaVA-1.6): CLIP tower on anyres tiles → ``mlp2x_gelu`` projector → unpadded grid with a learned
    ``image_newline`` after every feature row → Llama / Mistral decoder (causal) → untied LM head.

    Fields as :class:`vtp_jax.config.LlavaConfig`, plus ``image_grid_pinpoints`` (candidate (height, width) pixel
    resolutions, each a multiple of ``vision.image_size``). The image layout (grid, unpad crop, N_v) of one image is
    :func:`vtp_jax.modeling.anyres.layout_for_config` of this config and the image's (height, width); there is no
    anyres_max downsampling (``max_num_patches`` is None).
    """

    vision: VisionConfig
    text: TextConfig
    image_token_id: int = 32000
    vision_feature_layer: tuple[int, ...] = (-2,)
    vision_feature_select_strategy: str = "default"
    projector_hidden_act: str = "gelu"
    projector_bias: bool = True
    image_grid_pinpoints: tuple[tuple[int, int], ...] = DEFAULT_GRID_PINPOINTS
    family: str = "llava_next"

    # ---- the tiling parameters vtp_jax.modeling.anyres.layout_for_config reads ------------------------------------
    @property
    def tile_size(self) -> int:
        """Pixel side of one tile (the CLIP input size, 336 for LLaVA-1.6)."""
        return self.vision.image_size

    @property
    def patches_per_side(self) -> int:
        """Feature-grid side of one tile (336 / 14 = 24)."""
        return self.vision.image_size // self.vision.patch_size

    @property
    def max_num_patches(self) -> None:
        """LLaVA-NeXT never downsamples the unpadded grid (no "anyres_max_N")."""
        return None

    @property
    def tokens_per_tile(self) -> int:
        return self.patches_per_side**2

    @property
    def num_visual_tokens(self) -> int:
        """An upper bound of N_v over all images: the largest pinpoint's grid without unpadding, plus its newlines
        and the base tile (2928 for LLaVA-1.6's pinpoints: 576 + 48 · (48 + 1)). An image's own N_v comes from its
        layout (``LlavaNext.num_visual_tokens(image_size)``); the generator reads it from the prompt."""
        p = self.patches_per_side
        return max(p * p + (h // self.tile_size * p) * (w // self.tile_size * p + 1)
                   for h, w in self.image_grid_pinpoints)


def llava_next_config_from_hf(d: dict) -> LlavaNextConfig:
    """Builds a :class:`LlavaNextConfig` from a ``config.json`` dict with ``model_type == "llava_next"``.

    Raises:
        ConfigError: another ``model_type``; any LLaVA field out of range (named as config.json spells it, see
        :func:`vtp_jax.config.llava_config_from_hf`); a vision tower other than CLIP or
        ``vision_feature_select_strategy`` "full" (the anyres grid needs the class token dropped from every tile, as
        transformers' ``pack_image_features`` assumes); malformed ``image_grid_pinpoints`` or a pinpoint that is not
        a positive multiple of ``vision_config.image_size``.
    """
    if not isinstance(d, dict) or d.get("model_type") != "llava_next":
        got = d.get("model_type") if isinstance(d, dict) else d
        raise ConfigError(f"unsupported model_type {got!r} (expected llava_next for LLaVA-NeXT)")
    base: LlavaConfig = llava_config_from_hf({**d, "model_type": "llava"})
    if base.vision.kind != "clip":
        raise ConfigError(f"LLaVA-NeXT needs a CLIP vision tower (vision_config.model_type clip_vision_model), got "
                          f"{base.vision.kind!r}")
    if base.vision_feature_select_strategy != "default":
        raise ConfigError(f"vision_feature_select_strategy {base.vision_feature_select_strategy!r} is not supported "
                          "for LLaVA-NeXT (only 'default': the class token is dropped from every tile)")
    raw = d.get("image_grid_pinpoints")
    if raw is None:  # transformers' default (checked too: a tower of another size needs its own pinpoints)
        raw = [list(p) for p in DEFAULT_GRID_PINPOINTS]
    pinpoints = parse_grid_pinpoints(raw, base.vision.image_size)
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(LlavaConfig) if f.name != "family"}
    return LlavaNextConfig(**fields, image_grid_pinpoints=pinpoints)
