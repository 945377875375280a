"""LLaDA-V (ML-GSAI/LLaDA-V, ``model_type`` ``llava_llada``): SigLIP tower with anyres tiling → ``mlp2x_gelu``
projector → LLaDA-8B (a bidirectional Llama); masked-diffusion generation (LLaDA's denoising loop).

Pruning stages: pre-LLM (ToDRE stage 1, DivPrune, random) and after the first denoising step (RedVTP,
LLaDA-FastV). A keep ratio R keeps ``max(1, int(N_v · R))`` visual tokens (RedVTP's code).
"""

from __future__ import annotations

from vtp_jax.families import register
from vtp_jax.families.base import MASKED_DIFFUSION, Family


def _config_from_hf(d: dict):
    from vtp_jax.config import llada_v_config_from_hf

    return llada_v_config_from_hf(d)


def _model_class():
    from vtp_jax.modeling.llada_v import LladaV

    return LladaV


def _processor(model_dir: str, cfg, **options):
    from vtp_jax.processing import LladaVProcessor

    return LladaVProcessor(model_dir, cfg, **options)


def _tensor_names():
    from vtp_jax.families.llada_v import names

    return names.map_name, names.is_ignored_llada_name


FAMILY = register(Family(
    name="llada_v",
    model_types=("llava_llada",),
    kind=MASKED_DIFFUSION,
    stages=("pre_llm", "during_generation"),
    keep_rounding="floor",
    config_from_hf=_config_from_hf,
    model_class=_model_class,
    processor=_processor,
    tensor_names=_tensor_names,
    description="LLaDA-V: SigLIP tower with anyres tiles, MLP projector, LLaDA decoder (masked diffusion)",
    prompt_formats=("official", "plain"),
))
