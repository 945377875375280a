"""Qwen2.5-VL's tensor-name map: Hugging Face tensor names → :class:`vtp_jax.modeling.qwen2_5_vl.Qwen25VL` paths.

Accepted naming schemes (each name is mapped on its own, so a checkpoint may mix them):

================  =====================================  =====================================
part              hub ``Qwen/Qwen2.5-VL-*`` files          transformers-5 ``state_dict()``
================  =====================================  =====================================
vision tower      ``visual.X``                             ``model.visual.X``
language model    ``model.X`` (``model.layers.…``)         ``model.language_model.X``
LM head           ``lm_head.weight`` (absent when tied)    ``lm_head.weight``
================  =====================================  =====================================

Sources: the hub checkpoints' ``model.safetensors.index.json`` (transformers 4.4x naming) and transformers 5's
``Qwen2_5_VLForConditionalGeneration`` (``_checkpoint_conversion_mapping`` / ``conversion_mapping.py``, which maps
``^visual`` → ``model.visual`` and ``^model(?!\\.(language_model|visual))`` → ``model.language_model``).

Vision names are transformers' own (``patch_embed.proj``, ``blocks.{i}.norm1`` / ``norm2`` / ``attn.qkv`` /
``attn.proj`` / ``mlp.*``, ``merger.ln_q``, ``merger.mlp.0`` / ``merger.mlp.2``). The Conv3d patch embedding
[D, C, T, p, p] becomes one kernel [C·T·p·p, D] (transform ``"patch"``); Linear weights are transposed; RMSNorm
weights and biases are copied. The rotary ``inv_freq`` buffers some exports carry are skipped.
"""

from __future__ import annotations

import re

from vtp_jax.families.tensor_names import Target, with_canonical_prefix

# (HF prefix, canonical prefix), longest first: "model.visual." and "model.language_model." before "model.".
_PREFIXES = (
    ("model.visual.", "vision."),
    ("visual.", "vision."),
    ("model.language_model.", "text."),
    ("model.", "text."),
    ("lm_head.", "lm_head."),
)

_N = r"(\d+)"
_VB = rf"vision\.blocks\.{_N}\."
_TL = rf"text\.layers\.{_N}\."
_RULES = [
    (r"vision\.patch_embed\.proj\.weight", "visual.patch_embed.proj.kernel", "patch"),
    (_VB + r"(norm[12])\.weight", "visual.blocks.{0}.{1}.weight", "none"),
    (_VB + r"attn\.(qkv|proj)\.weight", "visual.blocks.{0}.attn.{1}.kernel", "linear"),
    (_VB + r"attn\.(qkv|proj)\.bias", "visual.blocks.{0}.attn.{1}.bias", "none"),
    (_VB + r"mlp\.(gate_proj|up_proj|down_proj)\.weight", "visual.blocks.{0}.mlp.{1}.kernel", "linear"),
    (_VB + r"mlp\.(gate_proj|up_proj|down_proj)\.bias", "visual.blocks.{0}.mlp.{1}.bias", "none"),
    (r"vision\.merger\.ln_q\.weight", "visual.merger.ln_q.weight", "none"),
    (r"vision\.merger\.mlp\.([02])\.weight", "visual.merger.mlp.{0}.kernel", "linear"),
    (r"vision\.merger\.mlp\.([02])\.bias", "visual.merger.mlp.{0}.bias", "none"),
    (r"text\.embed_tokens\.weight", "language_model.embed_tokens.embedding", "none"),
    (_TL + r"(input_layernorm|post_attention_layernorm)\.weight", "language_model.layers.{0}.{1}.weight", "none"),
    (_TL + r"self_attn\.([qkvo]_proj)\.weight", "language_model.layers.{0}.self_attn.{1}.kernel", "linear"),
    (_TL + r"self_attn\.([qkv]_proj)\.bias", "language_model.layers.{0}.self_attn.{1}.bias", "none"),
    (_TL + r"mlp\.(gate_proj|up_proj|down_proj)\.weight", "language_model.layers.{0}.mlp.{1}.kernel", "linear"),
    (r"text\.norm\.weight", "language_model.norm.weight", "none"),
    (r"lm_head\.weight", "lm_head.kernel", "linear"),
]
_COMPILED = [(re.compile(pattern + r"\Z"), template, transform) for pattern, template, transform in _RULES]
_IGNORED = re.compile(r"(text\.rotary_emb\.inv_freq|text\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"
                      r"|vision\.rotary_pos_emb\.inv_freq)\Z")


def canonical(name: str) -> str | None:
    """``vision.X`` / ``text.X`` / ``lm_head.X`` for a known scheme prefix, else None."""
    return with_canonical_prefix(name, _PREFIXES)


def is_ignored(name: str) -> bool:
    """True for the rotary ``inv_freq`` buffers (recomputed from the config, never parameters)."""
    canon = canonical(name)
    return canon is not None and _IGNORED.match(canon) is not None


def map_name(name: str) -> Target | None:
    """Our parameter path and transform for an HF Qwen2.5-VL tensor name, or None if the name is not recognised.

    >>> map_name("visual.blocks.3.attn.qkv.weight")
    Target(path='visual.blocks.3.attn.qkv.kernel', transform='linear')
    >>> map_name("model.layers.0.self_attn.k_proj.bias")
    Target(path='language_model.layers.0.self_attn.k_proj.bias', transform='none')
    """
    canon = canonical(name)
    if canon is None:
        return None
    for regex, template, transform in _COMPILED:
        m = regex.match(canon)
        if m:
            return Target(template.format(*m.groups()), transform)
    return None
