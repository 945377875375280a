"""Qwen2.5-VL (transformers ``Qwen2_5_VLForConditionalGeneration``, ``model_type`` ``qwen2_5_vl``): a window-attention
vision transformer on the image at its own (dynamic) resolution → 2×2 patch merger → Qwen2 decoder with M-RoPE;
autoregressive generation (prefill + KV-cache decode), the generator of LLaVA.

Pruning stages: LLaVA's — pre-LLM (ToDRE stage 1, DivPrune, random), in-LLM (FastV, ToDRE stage 2) and per-token
decode pruning (DyRate). The pre-LLM stage selects among the **merger outputs** (the LLM-width visual tokens, one per
2×2 patch block, in the processor's row-major order): the tokens the LLM would see, as for LLaVA's projector outputs.
ToDRE's pivot: the tower has no class token, so the automatic pivot is ``"norm"`` (the merged token of largest L2
norm; see :mod:`vtp_jax.pruning.todre`). Kept visual tokens keep their own (t, h, w) M-RoPE positions and the text
after the image keeps its positions (no shift) unless a method's ``reindex`` asks for 1-D renumbering.

A keep ratio R keeps ``round(N_v · R)`` visual tokens (FastV's code). N_v = t·h·w / 4 depends on the image (the
processor resizes it between ``min_pixels`` and ``max_pixels``); there is no fixed ``num_visual_tokens``.

Files: :mod:`.config` (``Qwen25VLConfig``, ``Qwen25VisionConfig``), :mod:`.names` (the converter's name map),
:mod:`.processing` (``Qwen25VLProcessor``); the model is :class:`vtp_jax.modeling.qwen2_5_vl.Qwen25VL`.
"""

from __future__ import annotations

from vtp_jax.families import register
from vtp_jax.families.base import AUTOREGRESSIVE, Family


def _config_from_hf(d: dict):
    from vtp_jax.families.qwen2_5_vl.config import qwen2_5_vl_config_from_hf

    return qwen2_5_vl_config_from_hf(d)


def _model_class():
    from vtp_jax.modeling.qwen2_5_vl import Qwen25VL

    return Qwen25VL


def _processor(model_dir: str, cfg, **options):
    from vtp_jax.families.qwen2_5_vl.processing import Qwen25VLProcessor

    return Qwen25VLProcessor(model_dir, cfg, **options)


def _tensor_names():
    from vtp_jax.families.qwen2_5_vl import names

    return names.map_name, names.is_ignored


FAMILY = register(Family(
    name="qwen2_5_vl",
    model_types=("qwen2_5_vl",),
    kind=AUTOREGRESSIVE,
    stages=("pre_llm", "in_llm", "decode"),
    keep_rounding="round",
    config_from_hf=_config_from_hf,
    model_class=_model_class,
    processor=_processor,
    tensor_names=_tensor_names,
    description="Qwen2.5-VL: window-attention ViT at dynamic resolution, 2×2 patch merger, Qwen2 decoder with "
                "M-RoPE (autoregressive)",
    processor_options=("min_pixels", "max_pixels"),
))
