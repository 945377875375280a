"""LLaVA-NeXT's tensor-name map: Hugging Face tensor names → :class:`vtp_jax.modeling.llava_next.LlavaNext` paths.

LLaVA-NeXT's parameters are LLaVA's plus one vector, so every name but that one goes through LLaVA's map
(:mod:`vtp_jax.families.llava.names`: the ``llava-hf/llava-v1.6-*`` hub names ``language_model.model.*``,
``language_model.lm_head.*``, ``vision_tower.vision_model.*``, ``multi_modal_projector.*``; transformers-5
``save_pretrained`` names ``vision_tower.*``; in-memory ``state_dict()`` names ``model.language_model.*``,
``model.vision_tower.*``, ``model.multi_modal_projector.*``, ``lm_head.*``). The learned newline
(transformers ``LlavaNextModel.image_newline``, [D_text]) is ``image_newline`` on the hub and in transformers 5's
files, ``model.image_newline`` in memory; both → ``image_newline`` (copied as is).
"""

from __future__ import annotations

from vtp_jax.families.llava import names as llava_names
from vtp_jax.families.tensor_names import Target

NEWLINE_NAMES = ("image_newline", "model.image_newline")


def map_name(name: str) -> Target | None:
    """Our parameter path and transform for an HF LLaVA-NeXT tensor name, or None if the name is not recognised.

    >>> map_name("image_newline")
    Target(path='image_newline', transform='none')
    >>> map_name("language_model.model.layers.0.self_attn.k_proj.weight")
    Target(path='language_model.layers.0.self_attn.k_proj.kernel', transform='linear')
    """
    if name in NEWLINE_NAMES:
        return Target("image_newline", "none")
    return llava_names.map_name(name)


def is_ignored(name: str) -> bool:
    """True for known non-parameter tensors (buffers such as ``position_ids``) the converter skips (LLaVA's list)."""
    return llava_names.is_ignored(name)
