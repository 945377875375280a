"""Model configurations, read from Hugging Face ``config.json`` files.

The dataclasses are frozen (hashable) so they can be closed over by jitted functions. Field names follow the
Hugging Face ones (``hidden_size``, ``num_attention_heads`` …) so a reader can check them against ``config.json``.

Sources: transformers ``CLIPVisionConfig``, ``SiglipVisionConfig``, ``LlamaConfig``, ``LlavaConfig`` (5.x), and
``modeling_rope_utils`` for the ``rope_parameters`` / legacy ``rope_theta`` + ``rope_scaling`` layouts.
"""

from __future__ import annotations

import dataclasses
from typing import Any


class ConfigError(ValueError):
    """A config.json that this library cannot build a model from (unknown ``model_type``, missing field…)."""


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """A ViT vision tower (CLIP: class token + pre-LN; SigLIP: neither)."""

    kind: str = "clip"  # "clip" | "siglip"
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    image_size: int = 336
    patch_size: int = 14
    num_channels: int = 3
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_positions(self) -> int:
        return self.num_patches + (1 if self.kind == "clip" else 0)


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary position embedding parameters (``rope_type`` "default" or "llama3")."""

    rope_type: str = "default"
    theta: float = 10000.0
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """A Llama-architecture decoder; ``causal=False`` makes it a LLaDA (bidirectional) decoder."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    head_dim: int = 128
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 4096
    rope: RopeConfig = RopeConfig()
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    causal: bool = True
    bos_token_id: int | None = None
    eos_token_id: tuple[int, ...] = ()
    pad_token_id: int | None = None


@dataclasses.dataclass(frozen=True)
class LlavaConfig:
    """A LLaVA-1.5 model: vision tower → ``mlp2x_gelu`` projector → Llama decoder."""

    vision: VisionConfig
    text: TextConfig
    image_token_id: int = 32000
    vision_feature_layer: tuple[int, ...] = (-2,)
    vision_feature_select_strategy: str = "default"
    projector_hidden_act: str = "gelu"
    projector_bias: bool = True
    family: str = "llava"

    @property
    def num_visual_tokens(self) -> int:
        """Visual tokens per image that reach the LLM (N_v)."""
        extra = 1 if (self.vision.kind == "clip" and self.vision_feature_select_strategy == "full") else 0
        return self.vision.num_patches + extra


def _get(d: dict, key: str, default: Any) -> Any:
    value = d.get(key, default)
    return default if value is None else value


def _as_tuple(x: Any) -> tuple[int, ...]:
    if x is None:
        return ()
    if isinstance(x, (list, tuple)):
        return tuple(int(v) for v in x)
    return (int(x),)


def rope_from_hf(d: dict) -> RopeConfig:
    """Reads RoPE parameters from a text config dict, new (``rope_parameters``) or legacy layout."""
    params = dict(d.get("rope_parameters") or {})
    legacy = d.get("rope_scaling") or {}
    params = {**legacy, **params}
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    theta = float(params.get("rope_theta", d.get("rope_theta", 10000.0)) or 10000.0)
    if rope_type not in ("default", "llama3"):
        raise ConfigError(f"unsupported rope_type {rope_type!r} (supported: default, llama3)")
    if rope_type == "default":
        return RopeConfig(theta=theta)
    return RopeConfig(
        rope_type="llama3",
        theta=theta,
        factor=float(params["factor"]),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(
            params.get("original_max_position_embeddings", d.get("max_position_embeddings", 8192))
        ),
    )


def text_config_from_hf(d: dict, *, causal: bool = True) -> TextConfig:
    """Builds a :class:`TextConfig` from a Llama-style ``text_config`` dict (HF defaults where absent)."""
    hidden = int(_get(d, "hidden_size", 4096))
    heads = int(_get(d, "num_attention_heads", 32))
    act = _get(d, "hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"unsupported text hidden_act {act!r} (Llama uses silu)")
    return TextConfig(
        vocab_size=int(_get(d, "vocab_size", 32000)),
        hidden_size=hidden,
        intermediate_size=int(_get(d, "intermediate_size", 11008)),
        num_hidden_layers=int(_get(d, "num_hidden_layers", 32)),
        num_attention_heads=heads,
        num_key_value_heads=int(_get(d, "num_key_value_heads", heads)),
        head_dim=int(_get(d, "head_dim", hidden // heads)),
        rms_norm_eps=float(_get(d, "rms_norm_eps", 1e-6)),
        max_position_embeddings=int(_get(d, "max_position_embeddings", 2048)),
        rope=rope_from_hf(d),
        attention_bias=bool(_get(d, "attention_bias", False)),
        mlp_bias=bool(_get(d, "mlp_bias", False)),
        tie_word_embeddings=bool(_get(d, "tie_word_embeddings", False)),
        causal=causal,
        bos_token_id=d.get("bos_token_id"),
        eos_token_id=_as_tuple(d.get("eos_token_id")),
        pad_token_id=d.get("pad_token_id"),
    )


_VISION_DEFAULTS = {  # LlavaConfig's default vision tower (CLIP ViT-L/14-336)
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
}


def vision_config_from_hf(d: dict) -> VisionConfig:
    """Builds a :class:`VisionConfig` from a ``vision_config`` dict (``clip_vision_model`` or ``siglip_vision_model``)."""
    model_type = d.get("model_type", "clip_vision_model")
    if model_type in ("clip_vision_model", "clip"):
        kind, act = "clip", "quick_gelu"
    elif model_type in ("siglip_vision_model", "siglip"):
        kind, act = "siglip", "gelu_pytorch_tanh"
    else:
        raise ConfigError(f"unsupported vision tower model_type {model_type!r} (supported: clip, siglip)")
    act = _get(d, "hidden_act", act)
    if act not in ("quick_gelu", "gelu_pytorch_tanh", "gelu"):
        raise ConfigError(f"unsupported vision hidden_act {act!r}")
    return VisionConfig(
        kind=kind,
        hidden_size=int(_get(d, "hidden_size", _VISION_DEFAULTS["hidden_size"])),
        intermediate_size=int(_get(d, "intermediate_size", _VISION_DEFAULTS["intermediate_size"])),
        num_hidden_layers=int(_get(d, "num_hidden_layers", _VISION_DEFAULTS["num_hidden_layers"])),
        num_attention_heads=int(_get(d, "num_attention_heads", _VISION_DEFAULTS["num_attention_heads"])),
        image_size=int(_get(d, "image_size", _VISION_DEFAULTS["image_size"])),
        patch_size=int(_get(d, "patch_size", _VISION_DEFAULTS["patch_size"])),
        num_channels=int(_get(d, "num_channels", 3)),
        layer_norm_eps=float(_get(d, "layer_norm_eps", 1e-5 if kind == "clip" else 1e-6)),
        hidden_act=act,
    )


def llava_config_from_hf(d: dict) -> LlavaConfig:
    """Builds a :class:`LlavaConfig` from a ``config.json`` dict with ``model_type == "llava"``.

    Raises:
        ConfigError: unknown ``model_type``, unsupported activation / RoPE type / feature strategy.
    """
    if d.get("model_type") != "llava":
        raise ConfigError(f"unsupported model_type {d.get('model_type')!r} (supported: llava)")
    text = dict(d.get("text_config") or {})
    text.setdefault("tie_word_embeddings", d.get("tie_word_embeddings", False))
    strategy = d.get("vision_feature_select_strategy", "default")
    if strategy not in ("default", "full"):
        raise ConfigError(f"unsupported vision_feature_select_strategy {strategy!r} (default or full)")
    image_token = d.get("image_token_id", d.get("image_token_index", 32000))
    vision = vision_config_from_hf(d.get("vision_config") or {"model_type": "clip_vision_model"})
    layers = _as_tuple(d.get("vision_feature_layer", -2))
    for layer in layers:
        if not -(vision.num_hidden_layers + 1) <= layer <= vision.num_hidden_layers:
            raise ConfigError(f"vision_feature_layer {layer} out of range for {vision.num_hidden_layers} layers")
    return LlavaConfig(
        vision=vision,
        text=text_config_from_hf(text),
        image_token_id=int(image_token),
        vision_feature_layer=layers,
        vision_feature_select_strategy=strategy,
        projector_hidden_act=d.get("projector_hidden_act", "gelu"),
        projector_bias=bool(d.get("multimodal_projector_bias", True)),
    )


def config_from_hf(d: dict) -> "LlavaConfig | LladaVConfig":
    """Dispatches on ``model_type``. Raises :class:`ConfigError` for unknown families."""
    model_type = d.get("model_type")
    if model_type == "llava":
        return llava_config_from_hf(d)
    if model_type == "llava_llada":
        return llada_v_config_from_hf(d)
    raise ConfigError(f"unsupported model_type {model_type!r} (supported: llava, llava_llada)")


# ---------------------------------------------------------------------------------------------------------------------
# LLaDA-V (diffusion VLM): SigLIP (last layer deleted) → mlp2x_gelu → LLaDA (bidirectional Llama), anyres tiling
# ---------------------------------------------------------------------------------------------------------------------

LLADA_MASK_TOKEN_ID = 126336  # [MASK] of the LLaDA-8B tokenizer (vocab 126464)
LLADA_VOCAB_SIZE = 126464
LLAVA_IMAGE_TOKEN_INDEX = -200  # LLaVA's IMAGE_TOKEN_INDEX: a sentinel id, not a vocabulary entry

# SigLIP so400m-patch14-384 as LLaDA-V stores it: 27 layers minus the deleted last one (siglip_encoder.py
# ``del self.vision_tower.vision_model.encoder.layers[-1:]``), pooling head replaced by Identity.
_LLADA_V_VISION_DEFAULTS = {
    "model_type": "siglip_vision_model",
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 26,
    "num_attention_heads": 16,
    "image_size": 384,
    "patch_size": 14,
    "layer_norm_eps": 1e-6,
    "hidden_act": "gelu_pytorch_tanh",
}

# LLaDA-8B (OLMo-style) config names → Llama-style names, for configs written by LLaDA's own ``LLaDAConfig``.
_LLADA_TEXT_ALIASES = {
    "d_model": "hidden_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "n_kv_heads": "num_key_value_heads",
    "mlp_hidden_size": "intermediate_size",
    "max_sequence_length": "max_position_embeddings",
}


@dataclasses.dataclass(frozen=True)
class LladaVConfig:
    """LLaDA-V: SigLIP tower → ``mlp2x_gelu`` projector → LLaDA decoder (``text.causal == False``).

    Images are tiled LLaVA-OneVision style ("anyres_max_N", "spatial_unpad", a learned ``image_newline`` per row):
    see :mod:`vtp_jax.modeling.anyres`.

    vision_feature_layer: our ``VisionTower.features`` indexing over the layers the checkpoint holds. LLaDA-V deletes
      the tower's last layer and takes the output of the new last one, so the default ``(-1,)`` over 26 stored layers
      equals hidden state −2 of the full 27-layer SigLIP.
    image_grid_pinpoints: candidate (height, width) resolutions in pixels (multiples of ``vision.image_size``).
    max_num_patches: N of "anyres_max_N" (None for plain "anyres": no downsampling).
    image_token_id: the placeholder id that marks visual positions in ``input_ids`` (LLaVA's −200 by default; it is
      never embedded).
    """

    vision: VisionConfig
    text: TextConfig
    image_token_id: int = LLAVA_IMAGE_TOKEN_INDEX
    vision_feature_layer: tuple[int, ...] = (-1,)
    image_grid_pinpoints: tuple[tuple[int, int], ...] = ()
    max_num_patches: int | None = 4
    mask_token_id: int = LLADA_MASK_TOKEN_ID
    projector_hidden_act: str = "gelu"
    projector_bias: bool = True
    family: str = "llada_v"

    @property
    def tile_size(self) -> int:
        """Pixel side of one tile (the SigLIP input size)."""
        return self.vision.image_size

    @property
    def patches_per_side(self) -> int:
        """Feature-grid side of one tile (384 / 14 = 27 for LLaDA-V)."""
        return self.vision.image_size // self.vision.patch_size

    @property
    def tokens_per_tile(self) -> int:
        return self.patches_per_side**2


def parse_grid_pinpoints(value: Any, tile_size: int) -> tuple[tuple[int, int], ...]:
    """Grid pinpoints as a tuple of (height, width) pixel pairs.

    Accepts LLaVA-OneVision's range string ``"(1x1),...,(6x6)"`` (every a×b from the first to the last pair, in
    tiles, times ``tile_size``; generated in the order LLaDA-V's ``mm_utils.get_anyres_image_grid_shape`` iterates,
    whose pairs are (width, height)) or an explicit list of pixel pairs, read as (height, width) the way transformers'
    LLaVA-OneVision does. (LLaDA-V's own code reads explicit lists as (width, height); for the symmetric grids it
    ships both readings are the same set.)

    Raises:
        ConfigError: malformed value, or a resolution that is not a positive multiple of ``tile_size``.
    """
    import re

    if isinstance(value, str):
        pairs = re.findall(r"\((\d+)x(\d+)\)", value)
        if "x" in value:
            if len(pairs) < 1:
                raise ConfigError(f"image_grid_pinpoints {value!r}: expected '(AxB),...,(CxD)'")
            (a0, b0), (a1, b1) = map(int, pairs[0]), map(int, pairs[-1])
            # LLaDA-V: grid_pinpoints = [(i, j) for i in range(a0, a1+1) for j in range(b0, b1+1)] read as (w, h)
            out = tuple((j * tile_size, i * tile_size) for i in range(a0, a1 + 1) for j in range(b0, b1 + 1))
        else:
            import ast

            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                raise ConfigError(f"image_grid_pinpoints {value!r}: not a list of pairs") from None
            return parse_grid_pinpoints(value, tile_size)
    elif isinstance(value, (list, tuple)):
        try:
            out = tuple((int(p[0]), int(p[1])) for p in value)
        except (TypeError, ValueError, IndexError):
            raise ConfigError(f"image_grid_pinpoints {value!r}: not a list of (height, width) pairs") from None
    else:
        raise ConfigError(f"image_grid_pinpoints {value!r}: expected a list of pairs or a '(AxB),...,(CxD)' string")
    if not out:
        raise ConfigError("image_grid_pinpoints is empty")
    for h, w in out:
        if h <= 0 or w <= 0 or h % tile_size or w % tile_size:
            raise ConfigError(
                f"image_grid_pinpoints: ({h}, {w}) is not a positive multiple of the tile size {tile_size}"
            )
    return out


def _llada_text_dict(d: dict) -> dict:
    """The text-model fields of a LLaDA-V config: ``text_config`` if present, else the top level (Llama-style names,
    with LLaDA-8B's OLMo-style names accepted as aliases)."""
    if isinstance(d.get("text_config"), dict):
        return dict(d["text_config"])
    text = dict(d)
    for old, new in _LLADA_TEXT_ALIASES.items():
        if text.get(new) is None and text.get(old) is not None:
            text[new] = text[old]
    if text.get("vocab_size") is None and text.get("embedding_size") is not None:
        text["vocab_size"] = text["embedding_size"]
    if "weight_tying" in text and "tie_word_embeddings" not in text:
        text["tie_word_embeddings"] = bool(text["weight_tying"])
    if text.get("hidden_act") is None and text.get("activation_type") is not None:
        act = text["activation_type"]
        text["hidden_act"] = "silu" if act in ("silu", "swiglu") else act
    return text


def llada_v_config_from_hf(d: dict) -> LladaVConfig:
    """Builds a :class:`LladaVConfig` from a LLaDA-V ``config.json`` dict (``model_type == "llava_llada"``).

    Sources: LLaDA-V ``llava_llada.py`` (``LlavaLLaDAConfig`` = LLaDA's Llama-style ``LLaDAConfig`` + LLaVA fields),
    ``llava_arch.py`` (anyres_max / spatial_unpad packing), ``multimodal_encoder/siglip_encoder.py`` (tower).

    Fields read:
      * text model: ``text_config`` if given, else top-level ``hidden_size``, ``intermediate_size``,
        ``num_hidden_layers``, ``num_attention_heads``, ``num_key_value_heads``, ``rms_norm_eps``, ``rope_theta``,
        ``vocab_size`` … (LLaDA-8B's ``d_model``/``n_layers``/``n_heads``/``n_kv_heads``/``mlp_hidden_size``/
        ``embedding_size`` are accepted too). Always bidirectional.
      * vision: ``vision_config`` (our own checkpoints write one; its ``num_hidden_layers`` is the number of layers
        stored). A real LLaDA-V config has none: then SigLIP so400m-patch14-384 with 26 layers (27 minus the deleted
        one) is assumed, checked against ``mm_hidden_size`` and ``mm_vision_tower`` (must name a SigLIP model).
      * ``vision_feature_layer`` (ours; default −1 = output of the last stored layer, what LLaDA-V's tower returns).
        ``mm_vision_select_layer`` is not used: LLaDA-V's SigLIP tower ignores it.
      * ``mm_projector_type`` must be "mlp2x_gelu"; ``mm_patch_merge_type`` "spatial_unpad";
        ``image_aspect_ratio`` "anyres_max_N" or "anyres" (default "anyres_max_4");
        ``image_grid_pinpoints`` (default "(1x1),...,(6x6)").
      * ``mask_token_id`` (top level or in ``text_config``). If absent, the LLaDA tokenizer's 126336 is used only when
        the vocabulary is LLaDA's (126464 entries); otherwise :class:`ConfigError`.
      * ``image_token_index`` / ``image_token_id`` (default −200, LLaVA's IMAGE_TOKEN_INDEX).

    Raises:
        ConfigError: wrong ``model_type``, no mask token id, unsupported projector / merge type / aspect ratio /
        vision tower, inconsistent sizes.
    """
    import re

    if d.get("model_type") != "llava_llada":
        raise ConfigError(f"unsupported model_type {d.get('model_type')!r} (expected llava_llada for LLaDA-V)")
    text_dict = _llada_text_dict(d)
    text_dict.setdefault("max_position_embeddings", 4096)
    text = text_config_from_hf(text_dict, causal=False)

    if d.get("vision_config") is not None:
        vd = dict(d["vision_config"])
        vd.setdefault("model_type", "siglip_vision_model")
        vision = vision_config_from_hf(vd)
    else:
        tower = str(d.get("mm_vision_tower") or "siglip")
        if "siglip" not in tower.lower():
            raise ConfigError(
                f"mm_vision_tower {tower!r}: without a vision_config only LLaDA-V's SigLIP so400m tower is supported"
            )
        vision = vision_config_from_hf(_LLADA_V_VISION_DEFAULTS)
    if vision.kind != "siglip":
        raise ConfigError(f"LLaDA-V needs a SigLIP vision tower, got {vision.kind!r}")
    mm_hidden = d.get("mm_hidden_size")
    if mm_hidden is not None and int(mm_hidden) != vision.hidden_size:
        raise ConfigError(f"mm_hidden_size {mm_hidden} does not match the vision hidden size {vision.hidden_size}")

    layers = _as_tuple(d.get("vision_feature_layer", -1))
    for layer in layers:
        if not -(vision.num_hidden_layers + 1) <= layer <= vision.num_hidden_layers:
            raise ConfigError(f"vision_feature_layer {layer} out of range for {vision.num_hidden_layers} layers")

    projector = d.get("mm_projector_type", "mlp2x_gelu") or "mlp2x_gelu"
    if projector != "mlp2x_gelu":
        raise ConfigError(f"unsupported mm_projector_type {projector!r} (supported: mlp2x_gelu)")
    merge = d.get("mm_patch_merge_type", "spatial_unpad") or "spatial_unpad"
    if merge != "spatial_unpad":
        raise ConfigError(f"unsupported mm_patch_merge_type {merge!r} (supported: spatial_unpad)")
    aspect = d.get("image_aspect_ratio", "anyres_max_4") or "anyres_max_4"
    m = re.fullmatch(r"anyres_max_(\d+)", aspect)
    if m:
        max_num_patches: int | None = int(m.group(1))
        if max_num_patches < 1:
            raise ConfigError(f"image_aspect_ratio {aspect!r}: N must be ≥ 1")
    elif aspect == "anyres":
        max_num_patches = None
    else:
        raise ConfigError(f"unsupported image_aspect_ratio {aspect!r} (supported: anyres_max_N, anyres)")
    pinpoints = parse_grid_pinpoints(d.get("image_grid_pinpoints") or "(1x1),...,(6x6)", vision.image_size)

    mask = d.get("mask_token_id", text_dict.get("mask_token_id"))
    if mask is None:
        if text.vocab_size == LLADA_VOCAB_SIZE:
            mask = LLADA_MASK_TOKEN_ID
        else:
            raise ConfigError(
                "config.json has no mask_token_id: a LLaDA-V checkpoint needs the [MASK] token id for diffusion "
                f"sampling (LLaDA's is {LLADA_MASK_TOKEN_ID}); add \"mask_token_id\" to config.json"
            )
    mask = int(mask)
    if not 0 <= mask < text.vocab_size:
        raise ConfigError(f"mask_token_id {mask} is outside the vocabulary (size {text.vocab_size})")
    image_token = d.get("image_token_index", d.get("image_token_id", LLAVA_IMAGE_TOKEN_INDEX))
    return LladaVConfig(
        vision=vision,
        text=text,
        image_token_id=int(image_token),
        vision_feature_layer=layers,
        image_grid_pinpoints=pinpoints,
        max_num_patches=max_num_patches,
        mask_token_id=mask,
    )
