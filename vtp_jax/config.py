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


def config_from_hf(d: dict) -> LlavaConfig:
    """Dispatches on ``model_type``. Raises :class:`ConfigError` for unknown families."""
    model_type = d.get("model_type")
    if model_type == "llava":
        return llava_config_from_hf(d)
    raise ConfigError(f"unsupported model_type {model_type!r} (supported: llava)")
