"""LLaVA's tensor-name map: Hugging Face LLaVA tensor names → vtp_jax parameter paths (the converter's input).

Three on-disk / in-memory naming schemes are accepted (transformers' ``modeling_llava.py`` key mapping, and the ``llava-hf/*`` hub files); one checkpoint may even
mix them, since every name is mapped on its own:

=================  ============================================  =====================================
part               hub ``llava-hf/*`` / transformers-5 files     transformers-5 ``state_dict()``
=================  ============================================  =====================================
vision tower       ``vision_tower.vision_model.X`` (hub),         ``model.vision_tower.X``
                   ``vision_tower.X`` (save_pretrained)
projector          ``multi_modal_projector.X``                    ``model.multi_modal_projector.X``
language model     ``language_model.model.X``                     ``model.language_model.X``
LM head            ``language_model.lm_head.weight``              ``lm_head.weight``
=================  ============================================  =====================================

Each name is first reduced to a canonical ``<part>.<X>`` form (``vision.``, ``projector.``, ``text.``,
``lm_head``), then matched against a table of regular expressions giving our path and a layout transform
(:mod:`vtp_jax.families.tensor_names`: ``linear``, ``conv``, ``none``; HF LayerNorm ``weight`` becomes our ``scale``).

Names of non-parameter buffers that some checkpoints carry (``position_ids``, ``rotary_emb.inv_freq``) and SigLIP's
unused pooling head are recognised and skipped (:func:`is_ignored`).
"""

from __future__ import annotations

import re

from vtp_jax.families.tensor_names import Target, with_canonical_prefix

# (HF prefix, canonical prefix), longest prefixes first so ``vision_tower.vision_model.`` wins over
# ``vision_tower.``.
_PREFIXES = (
    ("model.vision_tower.vision_model.", "vision."),
    ("model.vision_tower.", "vision."),
    ("vision_tower.vision_model.", "vision."),
    ("vision_tower.", "vision."),
    ("model.multi_modal_projector.", "projector."),
    ("multi_modal_projector.", "projector."),
    ("model.language_model.", "text."),
    ("language_model.model.", "text."),
    ("language_model.lm_head.", "lm_head."),
    ("lm_head.", "lm_head."),
)

_N = r"(\d+)"
_NORM = {"weight": "scale", "bias": "bias"}  # HF LayerNorm → Flax LayerNorm parameter names

# (canonical-name regex, our path template, transform). Groups are substituted with str.format (positional);
# ``{norm}`` is the Flax LayerNorm name ("scale" / "bias") for the HF name in the last group.
_VL = rf"vision\.encoder\.layers\.{_N}\."  # a vision encoder layer
_TL = rf"text\.layers\.{_N}\."  # a language-model layer
_RULES = [
    # vision tower (CLIP / SigLIP)
    (r"vision\.embeddings\.class_embedding", "vision_tower.class_embedding", "none"),
    (r"vision\.embeddings\.patch_embedding\.weight", "vision_tower.patch_embedding.kernel", "conv"),
    (r"vision\.embeddings\.patch_embedding\.bias", "vision_tower.patch_embedding.bias", "none"),
    (r"vision\.embeddings\.position_embedding\.weight", "vision_tower.position_embedding.embedding", "none"),
    (r"vision\.(pre_layrnorm|post_layernorm)\.(weight|bias)", "vision_tower.{0}.{norm}", "none"),
    (_VL + r"(layer_norm[12])\.(weight|bias)", "vision_tower.layers.{0}.{1}.{norm}", "none"),
    (_VL + r"self_attn\.([qkv])_proj\.weight", "vision_tower.layers.{0}.self_attn.{1}_proj.kernel", "linear"),
    (_VL + r"self_attn\.([qkv])_proj\.bias", "vision_tower.layers.{0}.self_attn.{1}_proj.bias", "none"),
    (_VL + r"self_attn\.out_proj\.weight", "vision_tower.layers.{0}.self_attn.o_proj.kernel", "linear"),
    (_VL + r"self_attn\.out_proj\.bias", "vision_tower.layers.{0}.self_attn.o_proj.bias", "none"),
    (_VL + r"mlp\.(fc[12])\.weight", "vision_tower.layers.{0}.mlp.{1}.kernel", "linear"),
    (_VL + r"mlp\.(fc[12])\.bias", "vision_tower.layers.{0}.mlp.{1}.bias", "none"),
    # projector
    (r"projector\.(linear_[12])\.weight", "multi_modal_projector.{0}.kernel", "linear"),
    (r"projector\.(linear_[12])\.bias", "multi_modal_projector.{0}.bias", "none"),
    # language model (Llama)
    (r"text\.embed_tokens\.weight", "language_model.embed_tokens.embedding", "none"),
    (_TL + r"(input_layernorm|post_attention_layernorm)\.weight", "language_model.layers.{0}.{1}.weight", "none"),
    (_TL + r"self_attn\.([qkvo]_proj)\.weight", "language_model.layers.{0}.self_attn.{1}.kernel", "linear"),
    (_TL + r"self_attn\.([qkvo]_proj)\.bias", "language_model.layers.{0}.self_attn.{1}.bias", "none"),
    (_TL + r"mlp\.(gate_proj|up_proj|down_proj)\.weight", "language_model.layers.{0}.mlp.{1}.kernel", "linear"),
    (_TL + r"mlp\.(gate_proj|up_proj|down_proj)\.bias", "language_model.layers.{0}.mlp.{1}.bias", "none"),
    (r"text\.norm\.weight", "language_model.norm.weight", "none"),
    (r"lm_head\.weight", "lm_head.kernel", "linear"),
]
_COMPILED = [(re.compile(pattern + r"\Z"), template, transform) for pattern, template, transform in _RULES]

# Buffers and unused modules some checkpoints carry; never parameters of our model.
_IGNORED = re.compile(
    r"(vision\.embeddings\.position_ids|text\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq|text\.rotary_emb\.inv_freq"
    r"|vision\.head\..*)\Z"
)


def canonical(name: str) -> str | None:
    """``vision.X`` / ``projector.X`` / ``text.X`` / ``lm_head.X`` for a known scheme prefix, else None."""
    return with_canonical_prefix(name, _PREFIXES)


def is_ignored(name: str) -> bool:
    """True for known non-parameter tensors (buffers, SigLIP's pooling head) that the converter skips."""
    canon = canonical(name)
    return canon is not None and _IGNORED.match(canon) is not None


def map_name(name: str) -> Target | None:
    """Our parameter path and transform for an HF tensor name, or None if the name is not recognised.

    >>> map_name("vision_tower.vision_model.encoder.layers.3.self_attn.out_proj.weight")
    Target(path='vision_tower.layers.3.self_attn.o_proj.kernel', transform='linear')
    """
    canon = canonical(name)
    if canon is None:
        return None
    for regex, template, transform in _COMPILED:
        m = regex.match(canon)
        if m:
            groups = m.groups()
            norm = {"norm": _NORM.get(groups[-1], "") if groups else ""}
            return Target(template.format(*groups, **norm), transform)
    return None
