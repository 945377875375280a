"""LLaVA-1.5 (transformers ``LlavaForConditionalGeneration``, ``model_type`` ``llava``): CLIP/SigLIP vision tower →
2-layer GELU projector → Llama decoder; autoregressive generation (prefill + KV-cache decode).

Pruning stages: pre-LLM (ToDRE stage 1, DivPrune, random), in-LLM (FastV, ToDRE stage 2) and per-token decode
pruning (DyRate). A keep ratio R keeps ``round(N_v · R)`` visual tokens (FastV's code, ``fastv_kvcache.py``).
"""

from __future__ import annotations

from vtp_jax.families import register
from vtp_jax.families.base import AUTOREGRESSIVE, Family


def _config_from_hf(d: dict):
    from vtp_jax.config import llava_config_from_hf

    return llava_config_from_hf(d)


def _model_class():
    from vtp_jax.modeling.llava import Llava

    return Llava


def _processor(model_dir: str, cfg):
    from vtp_jax.processing import Processor

    return Processor(model_dir, image_token_id=cfg.image_token_id, num_visual_tokens=cfg.num_visual_tokens)


def _processor_fields(cfg) -> tuple[str, dict]:
    """What transformers' ``LlavaProcessor`` needs to expand ``<image>``: the patch size, the feature-select
    strategy and the extra image tokens (1 for a CLIP tower's class token, 0 for SigLIP)."""
    return "LlavaProcessor", {"patch_size": cfg.vision.patch_size,
                              "vision_feature_select_strategy": cfg.vision_feature_select_strategy,
                              "num_additional_image_tokens": 1 if cfg.vision.kind == "clip" else 0}


def _tensor_names():
    from vtp_jax.families.llava import names

    return names.map_name, names.is_ignored


FAMILY = register(Family(
    name="llava",
    model_types=("llava",),
    kind=AUTOREGRESSIVE,
    stages=("pre_llm", "in_llm", "decode"),
    keep_rounding="round",
    config_from_hf=_config_from_hf,
    model_class=_model_class,
    processor=_processor,
    tensor_names=_tensor_names,
    description="LLaVA-1.5: CLIP tower, MLP projector, Llama decoder (autoregressive)",
    processor_fields=_processor_fields,
))
