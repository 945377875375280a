"""LLaVA-NeXT / LLaVA-1.6 (transformers ``LlavaNextForConditionalGeneration``, ``model_type`` ``llava_next``):
CLIP-336 tower on anyres tiles (``image_grid_pinpoints``) → 2-layer GELU projector → unpadded grid with an
``image_newline`` per row → Llama / Mistral decoder; autoregressive generation (prefill + KV-cache decode), the
generator of LLaVA.

Pruning stages: LLaVA's — pre-LLM (ToDRE stage 1, DivPrune, random), in-LLM (FastV, ToDRE stage 2) and per-token
decode pruning (DyRate) — over the packed visual sequence (base tile, grid, newline tokens) as it reaches the LLM.
A keep ratio R keeps ``round(N_v · R)`` visual tokens (FastV's code). N_v depends on the image (up to 2928 for
LLaVA-1.6's pinpoints); ``cfg.num_visual_tokens`` is its upper bound over the pinpoints.

Files: :mod:`.config` (``LlavaNextConfig``), :mod:`.names` (the converter's name map: LLaVA's plus
``image_newline``), :mod:`.processing` (``LlavaNextProcessor``); the model is
:class:`vtp_jax.modeling.llava_next.LlavaNext`.
"""

from __future__ import annotations

from vtp_jax.families import register
from vtp_jax.families.base import AUTOREGRESSIVE, Family


def _config_from_hf(d: dict):
    from vtp_jax.families.llava_next.config import llava_next_config_from_hf

    return llava_next_config_from_hf(d)


def _model_class():
    from vtp_jax.modeling.llava_next import LlavaNext

    return LlavaNext


def _processor(model_dir: str, cfg):
    from vtp_jax.families.llava_next.processing import LlavaNextProcessor

    return LlavaNextProcessor(model_dir, cfg)


def _processor_fields(cfg) -> tuple[str, dict]:
    """What transformers' ``LlavaNextProcessor`` needs to expand ``<image>``: the patch size, the feature-select
    strategy and the class token of the CLIP tower (``num_additional_image_tokens`` 1)."""
    return "LlavaNextProcessor", {"patch_size": cfg.vision.patch_size,
                                  "vision_feature_select_strategy": cfg.vision_feature_select_strategy,
                                  "num_additional_image_tokens": 1}


def _tensor_names():
    from vtp_jax.families.llava_next import names

    return names.map_name, names.is_ignored


FAMILY = register(Family(
    name="llava_next",
    model_types=("llava_next",),
    kind=AUTOREGRESSIVE,
    stages=("pre_llm", "in_llm", "decode"),
    keep_rounding="round",
    config_from_hf=_config_from_hf,
    model_class=_model_class,
    processor=_processor,
    tensor_names=_tensor_names,
    description="LLaVA-NeXT: CLIP tower on anyres tiles with image_newline, MLP projector, Llama / Mistral decoder "
                "(autoregressive)",
    processor_fields=_processor_fields,
))
