"""Tensor-name map for LLaDA-V checkpoints (and plain LLaDA-8B LLM names) → vtp_jax :class:`LladaV` parameter paths.

Pure functions, no I/O. Names on disk (from LLaDA-V's code: ``train/llava/model/llava_arch.py``,
``language_model/llava_llada.py``, ``language_model/modeling_llada.py``, ``multimodal_encoder/siglip_encoder.py``),
each → our path [transform]; ``VT`` = ``model.vision_tower.vision_tower.vision_model.`` (the ``vision_model.`` level
may be absent, as in transformers 5's ``SiglipVisionModel``):

* ``VT embeddings.patch_embedding.weight`` → ``vision_tower.patch_embedding.kernel`` [conv]; ``.bias`` → ``.bias``
* ``VT embeddings.position_embedding.weight`` → ``vision_tower.position_embedding.embedding``
* ``VT encoder.layers.N.self_attn.{q,k,v}_proj.{weight,bias}`` → ``vision_tower.layers.N.self_attn.{q,k,v}_proj.
  {kernel,bias}``; ``out_proj`` → ``o_proj``
* ``VT encoder.layers.N.layer_norm{1,2}.{weight,bias}`` → ``vision_tower.layers.N.layer_norm{1,2}.{scale,bias}``
* ``VT encoder.layers.N.mlp.fc{1,2}.{weight,bias}`` → ``vision_tower.layers.N.mlp.fc{1,2}.{kernel,bias}``
* ``VT post_layernorm.{weight,bias}`` → ``vision_tower.post_layernorm.{scale,bias}`` (held, not used for features)
* ``model.mm_projector.0.*`` / ``model.mm_projector.2.*`` (``nn.Sequential(Linear, GELU, Linear)``) →
  ``multi_modal_projector.linear_1.*`` / ``linear_2.*``
* ``model.image_newline`` → ``image_newline``
* ``model.embed_tokens.weight`` → ``language_model.embed_tokens.embedding``
* ``model.layers.N.self_attn.{q,k,v,o}_proj.weight`` → ``language_model.layers.N.self_attn.{q,k,v,o}_proj.kernel``
* ``model.layers.N.mlp.{gate,up,down}_proj.weight`` → ``language_model.layers.N.mlp.{gate,up,down}_proj.kernel``
* ``model.layers.N.{input_layernorm,post_attention_layernorm}.weight`` → ``language_model.layers.N.{…}.weight``
* ``model.norm.weight`` → ``language_model.norm.weight``; ``lm_head.weight`` → ``lm_head.kernel`` [linear]

Plain LLaDA-8B (ML-GSAI/LLaDA ``modeling_llada.py``, OLMo-style) LLM names are accepted too:
``model.transformer.wte.weight`` (embedding), ``model.transformer.blocks.N.{attn_norm, q_proj, k_proj, v_proj,
attn_out, ff_norm, ff_proj, up_proj, ff_out}.weight`` (``attn_out`` = o_proj, ``ff_proj`` = gate, ``up_proj`` = up,
``ff_out`` = down; norms are RMSNorm weights), ``model.transformer.ln_f.weight`` (final norm) and
``model.transformer.ff_out.weight`` (the untied LM head).

Transforms: "linear" (torch [out, in] → kernel [in, out]), "conv" (torch [D, C, p, p] → [p, p, C, D]), "none".
Buffers (``position_ids``, ``rotary_emb.inv_freq``) and SigLIP's pooling ``head`` (LLaDA-V replaces it with
Identity, so real checkpoints do not carry it) are recognised by :func:`is_ignored_llada_name`.

The vision encoder layers a checkpoint holds are the layers of our tower. LLaDA-V's tower deletes SigLIP's 27th layer
when it is built, so a saved LLaDA-V state dict holds 26 (``layers.0`` … ``layers.25``; inferred from the code — the
hub's index file was not available to check). A tensor of a layer beyond ``vision.num_hidden_layers`` maps to a path
the model does not have (the converter should report it as unexpected).
"""

from __future__ import annotations

import re
from typing import NamedTuple


class LladaTarget(NamedTuple):
    """Our parameter path (tuple of strings; layer indices as digit strings) and the layout transform."""

    path: tuple[str, ...]
    transform: str

    @property
    def dotted(self) -> str:
        """``"language_model.layers.0.self_attn.q_proj.kernel"`` (the converter's dotted form)."""
        return ".".join(self.path)

    def state_path(self) -> tuple:
        """The path with layer indices as ints, as in ``nnx.to_flat_state`` of the model."""
        return tuple(int(p) if p.isdigit() else p for p in self.path)


_N = r"(\d+)"
_NORM = {"weight": "scale", "bias": "bias"}  # torch LayerNorm → Flax LayerNorm
_VT = r"(?:model\.)?vision_tower\.vision_tower\.(?:vision_model\.)?"
_LM = r"(?:model\.)"

# (regex, path builder from match groups, transform)
_RULES: list[tuple[str, object, str]] = [
    # ---- vision tower (SigLIP) ----
    (_VT + r"embeddings\.patch_embedding\.weight", lambda g: ("vision_tower", "patch_embedding", "kernel"), "conv"),
    (_VT + r"embeddings\.patch_embedding\.bias", lambda g: ("vision_tower", "patch_embedding", "bias"), "none"),
    (_VT + r"embeddings\.position_embedding\.weight",
     lambda g: ("vision_tower", "position_embedding", "embedding"), "none"),
    (_VT + rf"encoder\.layers\.{_N}\.self_attn\.([qkv])_proj\.weight",
     lambda g: ("vision_tower", "layers", g[0], "self_attn", f"{g[1]}_proj", "kernel"), "linear"),
    (_VT + rf"encoder\.layers\.{_N}\.self_attn\.([qkv])_proj\.bias",
     lambda g: ("vision_tower", "layers", g[0], "self_attn", f"{g[1]}_proj", "bias"), "none"),
    (_VT + rf"encoder\.layers\.{_N}\.self_attn\.out_proj\.weight",
     lambda g: ("vision_tower", "layers", g[0], "self_attn", "o_proj", "kernel"), "linear"),
    (_VT + rf"encoder\.layers\.{_N}\.self_attn\.out_proj\.bias",
     lambda g: ("vision_tower", "layers", g[0], "self_attn", "o_proj", "bias"), "none"),
    (_VT + rf"encoder\.layers\.{_N}\.(layer_norm[12])\.(weight|bias)",
     lambda g: ("vision_tower", "layers", g[0], g[1], _NORM[g[2]]), "none"),
    (_VT + rf"encoder\.layers\.{_N}\.mlp\.(fc[12])\.weight",
     lambda g: ("vision_tower", "layers", g[0], "mlp", g[1], "kernel"), "linear"),
    (_VT + rf"encoder\.layers\.{_N}\.mlp\.(fc[12])\.bias",
     lambda g: ("vision_tower", "layers", g[0], "mlp", g[1], "bias"), "none"),
    (_VT + r"post_layernorm\.(weight|bias)", lambda g: ("vision_tower", "post_layernorm", _NORM[g[0]]), "none"),
    # ---- projector (nn.Sequential: 0 = Linear, 1 = GELU, 2 = Linear) and newline ----
    (r"(?:model\.)?mm_projector\.0\.weight", lambda g: ("multi_modal_projector", "linear_1", "kernel"), "linear"),
    (r"(?:model\.)?mm_projector\.0\.bias", lambda g: ("multi_modal_projector", "linear_1", "bias"), "none"),
    (r"(?:model\.)?mm_projector\.2\.weight", lambda g: ("multi_modal_projector", "linear_2", "kernel"), "linear"),
    (r"(?:model\.)?mm_projector\.2\.bias", lambda g: ("multi_modal_projector", "linear_2", "bias"), "none"),
    (r"(?:model\.)?image_newline", lambda g: ("image_newline",), "none"),
    # ---- LLaDA-V LLM (Llama-style names) ----
    (_LM + r"embed_tokens\.weight", lambda g: ("language_model", "embed_tokens", "embedding"), "none"),
    (_LM + rf"layers\.{_N}\.self_attn\.([qkvo]_proj)\.weight",
     lambda g: ("language_model", "layers", g[0], "self_attn", g[1], "kernel"), "linear"),
    (_LM + rf"layers\.{_N}\.self_attn\.([qkvo]_proj)\.bias",
     lambda g: ("language_model", "layers", g[0], "self_attn", g[1], "bias"), "none"),
    (_LM + rf"layers\.{_N}\.mlp\.(gate_proj|up_proj|down_proj)\.weight",
     lambda g: ("language_model", "layers", g[0], "mlp", g[1], "kernel"), "linear"),
    (_LM + rf"layers\.{_N}\.mlp\.(gate_proj|up_proj|down_proj)\.bias",
     lambda g: ("language_model", "layers", g[0], "mlp", g[1], "bias"), "none"),
    (_LM + rf"layers\.{_N}\.(input_layernorm|post_attention_layernorm)\.weight",
     lambda g: ("language_model", "layers", g[0], g[1], "weight"), "none"),
    (_LM + r"norm\.weight", lambda g: ("language_model", "norm", "weight"), "none"),
    (r"lm_head\.weight", lambda g: ("lm_head", "kernel"), "linear"),
    # ---- plain LLaDA-8B LLM (OLMo-style names) ----
    (r"model\.transformer\.wte\.weight", lambda g: ("language_model", "embed_tokens", "embedding"), "none"),
    (rf"model\.transformer\.blocks\.{_N}\.attn_norm\.weight",
     lambda g: ("language_model", "layers", g[0], "input_layernorm", "weight"), "none"),
    (rf"model\.transformer\.blocks\.{_N}\.ff_norm\.weight",
     lambda g: ("language_model", "layers", g[0], "post_attention_layernorm", "weight"), "none"),
    (rf"model\.transformer\.blocks\.{_N}\.([qkv]_proj)\.weight",
     lambda g: ("language_model", "layers", g[0], "self_attn", g[1], "kernel"), "linear"),
    (rf"model\.transformer\.blocks\.{_N}\.attn_out\.weight",
     lambda g: ("language_model", "layers", g[0], "self_attn", "o_proj", "kernel"), "linear"),
    (rf"model\.transformer\.blocks\.{_N}\.ff_proj\.weight",
     lambda g: ("language_model", "layers", g[0], "mlp", "gate_proj", "kernel"), "linear"),
    (rf"model\.transformer\.blocks\.{_N}\.up_proj\.weight",
     lambda g: ("language_model", "layers", g[0], "mlp", "up_proj", "kernel"), "linear"),
    (rf"model\.transformer\.blocks\.{_N}\.ff_out\.weight",
     lambda g: ("language_model", "layers", g[0], "mlp", "down_proj", "kernel"), "linear"),
    (r"model\.transformer\.ln_f\.weight", lambda g: ("language_model", "norm", "weight"), "none"),
    (r"model\.transformer\.ff_out\.weight", lambda g: ("lm_head", "kernel"), "linear"),
]
_COMPILED = [(re.compile(pattern + r"\Z"), build, transform) for pattern, build, transform in _RULES]

_IGNORED = re.compile(
    r"(?:" + _VT + r"(?:embeddings\.position_ids|head\..*)"
    r"|(?:model\.)?layers\.\d+\.self_attn\.rotary_emb\.inv_freq"
    r"|(?:model\.)?rotary_emb\.inv_freq"
    r"|model\.transformer\.blocks\.\d+\.(?:rotary_emb\.inv_freq|rotary_emb\..*)"
    r")\Z"
)


def canonical_llada_name(hf_name: str) -> LladaTarget | None:
    """Our parameter path and transform for a LLaDA-V (or plain LLaDA) tensor name, or None if not recognised.

    >>> canonical_llada_name("model.mm_projector.2.weight")
    LladaTarget(path=('multi_modal_projector', 'linear_2', 'kernel'), transform='linear')
    >>> canonical_llada_name("model.transformer.blocks.3.ff_proj.weight").dotted
    'language_model.layers.3.mlp.gate_proj.kernel'
    """
    for regex, build, transform in _COMPILED:
        m = regex.match(hf_name)
        if m:
            return LladaTarget(tuple(build(m.groups())), transform)
    return None


def is_ignored_llada_name(hf_name: str) -> bool:
    """True for tensors that are not parameters of our model and are skipped: buffers (``position_ids``,
    ``rotary_emb.inv_freq``) and SigLIP's pooling head."""
    return _IGNORED.match(hf_name) is not None


def is_llada_v_name(hf_name: str) -> bool:
    """True if the name belongs to the LLaDA-V / LLaDA naming (mapped or ignored) — a cheap scheme sniffer."""
    return canonical_llada_name(hf_name) is not None or is_ignored_llada_name(hf_name)


def map_name(hf_name: str):
    """The converter's form of :func:`canonical_llada_name`: a :class:`vtp_jax.families.tensor_names.Target`
    (dotted path, transform), or None if the name is not recognised."""
    from vtp_jax.families.tensor_names import Target

    target = canonical_llada_name(hf_name)
    return None if target is None else Target(target.dotted, target.transform)
