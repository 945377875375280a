"""Qwen2.5-VL's config: Hugging Face ``config.json`` (``model_type`` ``qwen2_5_vl``) → :class:`Qwen25VLConfig`.

Source: transformers ``models/qwen2_5_vl/configuration_qwen2_5_vl.py`` (5.x): ``Qwen2_5_VLConfig`` holds a
``vision_config`` (``Qwen2_5_VLVisionConfig``), a ``text_config`` (``Qwen2_5_VLTextConfig``: a Qwen2 decoder) and the
special token ids; ``tie_word_embeddings`` (True for Qwen2.5-VL-3B, False for 7B / 72B).

Two layouts of the text fields are read: the hub files of ``Qwen/Qwen2.5-VL-*`` (written by transformers 4.4x) keep
them at the top level with ``rope_theta`` and ``rope_scaling = {"type": "mrope", "mrope_section": [16, 24, 24]}``;
transformers 5's ``save_pretrained`` writes a nested ``text_config`` with ``rope_parameters = {"rope_type":
"default", "rope_theta": …, "mrope_section": […]}``. Nested fields win over top-level ones. Missing fields take
``Qwen2_5_VLTextConfig``'s defaults.

The Qwen2 decoder differs from Llama's in three ways the shared :class:`vtp_jax.config.TextConfig` carries: q/k/v
projections with biases and an o_proj without (``qkv_bias``), M-RoPE (``rope.mrope_section``), and head_dim always
``hidden_size / num_attention_heads`` (``Qwen2_5_VLAttention`` ignores a ``head_dim`` field). Sliding-window
attention (``use_sliding_window``) is refused: no released Qwen2.5-VL checkpoint uses it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from vtp_jax.config import ACTIVATION_NAMES, ConfigError, TextConfig, _flag, _object, _token_id, text_config_from_hf

def _as_int(name: str, value) -> int:
    if isinstance(value, (list, tuple)):  # transformers allows [p, p] / (p, p); only square sizes are used
        if len(set(value)) != 1:
            raise ValueError(f"{name} must be one size, got {value!r}")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class Qwen25VisionConfig:
    """The vision tower's configuration (transformers ``Qwen2_5_VLVisionConfig``; defaults are that class's).

    Real checkpoints override several defaults (Qwen2.5-VL-3B/7B/72B: ``hidden_size=1280``, ``intermediate_size``
    3420, ``num_heads=16``, ``depth=32``, ``window_size=112``, ``out_hidden_size`` = the LLM width).
    ``rope_theta`` comes from ``rope_parameters["rope_theta"]`` (10000 when absent).
    """

    depth: int = 32
    hidden_size: int = 3584
    hidden_act: str = "silu"
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    out_hidden_size: int = 3584
    rope_theta: float = 10000.0

    def __post_init__(self):
        object.__setattr__(self, "fullatt_block_indexes", tuple(int(i) for i in self.fullatt_block_indexes))
        for name in ("depth", "hidden_size", "intermediate_size", "num_heads", "in_channels", "patch_size",
                     "spatial_merge_size", "temporal_patch_size", "window_size", "out_hidden_size"):
            v = _as_int(name, getattr(self, name))
            if v <= 0:
                raise ValueError(f"{name} must be positive, got {v}")
            object.__setattr__(self, name, v)
        if self.hidden_act not in ACTIVATION_NAMES:
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r} (known: {sorted(ACTIVATION_NAMES)})")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 4:
            raise ValueError(f"head_dim {self.head_dim} must be divisible by 4 (2-D axial rope over h and w)")
        if self.merger_window < 1:
            raise ValueError(f"window_size {self.window_size} is smaller than one merged unit "
                             f"(spatial_merge_size · patch_size = {self.spatial_merge_size * self.patch_size})")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    # the names the shared code reads from every vision config (ToDRE's pivot rule, the converter's layer check)
    kind = "qwen2_5_vl"  # no class token: ToDRE's automatic pivot is "norm"

    @property
    def num_hidden_layers(self) -> int:
        return self.depth

    @property
    def num_attention_heads(self) -> int:
        return self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch row of ``pixel_values``: C · T · P · P."""
        return self.in_channels * self.temporal_patch_size * self.patch_size ** 2

    @property
    def merge_unit(self) -> int:
        """Patches per merged token: spatial_merge_size²."""
        return self.spatial_merge_size ** 2

    @property
    def merger_window(self) -> int:
        """Window side in merged units: ``window_size // spatial_merge_size // patch_size`` (transformers'
        ``vit_merger_window_size``)."""
        return self.window_size // self.spatial_merge_size // self.patch_size

    @classmethod
    def from_hf(cls, config: Mapping[str, Any] | Any) -> "Qwen25VisionConfig":
        """From transformers' ``vision_config`` dict (``config.json["vision_config"]`` or
        ``Qwen2_5_VLVisionConfig.to_dict()``; a whole Qwen2.5-VL config dict / config object is accepted too and
        its ``vision_config`` read). Missing keys take transformers' defaults; unknown keys are ignored. Older
        checkpoints spell ``in_channels`` as ``in_chans`` (and carry an unused ``spatial_patch_size``)."""
        if not isinstance(config, Mapping):
            config = config.to_dict() if hasattr(config, "to_dict") else vars(config)
        if "vision_config" in config:
            config = config["vision_config"]
            if not isinstance(config, Mapping):
                config = config.to_dict()
        d = dict(config)
        if "in_channels" not in d and "in_chans" in d:
            d["in_channels"] = d["in_chans"]
        rope = d.get("rope_parameters") or {}
        if rope.get("rope_type", "axial") not in ("axial", "default"):
            raise ValueError(f"the Qwen2.5-VL vision tower has axial rope only, got {rope!r}")
        kwargs = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
        kwargs["rope_theta"] = float(rope.get("rope_theta", d.get("rope_theta", cls.rope_theta)))
        return cls(**kwargs)


# Qwen2_5_VLTextConfig's defaults (transformers 5.x), for fields a config.json leaves out.
TEXT_DEFAULTS = {"vocab_size": 152064, "hidden_size": 8192, "intermediate_size": 29568, "num_hidden_layers": 80,
                 "num_attention_heads": 64, "num_key_value_heads": 8, "hidden_act": "silu",
                 "max_position_embeddings": 32768, "rms_norm_eps": 1e-5, "rope_theta": 1e6}
DEFAULT_MROPE_SECTION = (16, 24, 24)  # Qwen2_5_VLRotaryEmbedding's fallback
TOKEN_DEFAULTS = {"image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
                  "vision_end_token_id": 151653}


@dataclasses.dataclass(frozen=True)
class Qwen25VLConfig:
    """Qwen2.5-VL: vision transformer (window attention, 2-D RoPE) → 2×2 patch merger → Qwen2 decoder (causal,
    q/k/v biases, GQA, M-RoPE) → LM head (tied to the token embedding when ``text.tie_word_embeddings``).

    Every image has its own visual-token count N_v = t · (h / m) · (w / m) for its patch grid ``grid_thw`` = (t, h,
    w) and merge size m (the processor's dynamic resolution), so there is no fixed ``num_visual_tokens``.
    """

    vision: Qwen25VisionConfig
    text: TextConfig
    image_token_id: int = TOKEN_DEFAULTS["image_token_id"]
    video_token_id: int = TOKEN_DEFAULTS["video_token_id"]
    vision_start_token_id: int = TOKEN_DEFAULTS["vision_start_token_id"]
    vision_end_token_id: int = TOKEN_DEFAULTS["vision_end_token_id"]
    family: str = "qwen2_5_vl"

    def num_visual_tokens_of(self, grid_thw) -> int:
        """N_v of an image of patch grid (t, h, w): t · h · w / spatial_merge_size²."""
        t, h, w = (int(v) for v in grid_thw)
        return t * h * w // self.vision.merge_unit


def _text_dict(d: dict) -> tuple[dict, str]:
    """The text fields (nested ``text_config`` over the top level, Qwen defaults under both) and the prefix that
    names them in messages."""
    nested = d.get("text_config")
    if nested is not None and not isinstance(nested, dict):
        raise ConfigError(f"text_config must be a JSON object, got {type(nested).__name__}")
    top = {k: v for k, v in d.items() if k not in ("vision_config", "text_config")}
    merged = {**TEXT_DEFAULTS, **top, **(nested or {})}
    merged.pop("head_dim", None)  # Qwen2_5_VLAttention uses hidden_size / num_attention_heads
    return merged, ("text_config." if nested else "")


def _mrope(td: dict, where: str) -> tuple[dict, tuple[int, ...]]:
    """Rewrites the rope fields to a 1-D "default" rope (what :func:`vtp_jax.config.rope_from_hf` reads) and
    returns the M-RoPE sections. Raises ConfigError for another rope type or a malformed section."""
    key = "rope_parameters" if td.get("rope_parameters") is not None else "rope_scaling"
    params = dict(_object(td.get(key), f"{where}{key}"))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("mrope", "default"):
        raise ConfigError(f"unsupported {where}{key}.rope_type {rope_type!r} for Qwen2.5-VL (mrope / default)")
    section = params.get("mrope_section", DEFAULT_MROPE_SECTION)
    if (not isinstance(section, (list, tuple)) or len(section) != 3
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in section)):
        raise ConfigError(f"{where}{key}.mrope_section must be three non-negative integers, got {section!r}")
    params.pop("mrope_section", None)
    params.pop("type", None)
    params["rope_type"] = "default"
    out = {k: v for k, v in td.items() if k not in ("rope_parameters", "rope_scaling")}
    out[key] = params
    return out, tuple(int(s) for s in section)


def qwen2_5_vl_config_from_hf(d: dict) -> Qwen25VLConfig:
    """Builds a :class:`Qwen25VLConfig` from a ``config.json`` dict with ``model_type == "qwen2_5_vl"``.

    Raises:
        ConfigError: another ``model_type``; a text field out of range (named as config.json spells it, see
        :func:`vtp_jax.config.text_config_from_hf`); ``mrope_section`` not three integers summing to head_dim / 2;
        ``use_sliding_window`` true; a bad ``vision_config`` field (prefixed ``vision_config.``); a vision output
        width (``out_hidden_size``) other than the decoder's ``hidden_size``; a special token id outside the
        vocabulary.
    """
    if not isinstance(d, dict) or d.get("model_type") != "qwen2_5_vl":
        got = d.get("model_type") if isinstance(d, dict) else d
        raise ConfigError(f"unsupported model_type {got!r} (expected qwen2_5_vl for Qwen2.5-VL)")
    td, where = _text_dict(d)
    if _flag(td.get("use_sliding_window", False) or False, f"{where}use_sliding_window"):
        raise ConfigError(f"{where}use_sliding_window true is not supported (no Qwen2.5-VL checkpoint uses it)")
    td, section = _mrope(td, where)
    text = text_config_from_hf(td, where=where)
    if sum(section) != text.head_dim // 2:
        raise ConfigError(f"mrope_section {list(section)} sums to {sum(section)}, expected head_dim / 2 = "
                          f"{text.head_dim // 2}")
    tie = _flag(d.get("tie_word_embeddings", False) or td.get("tie_word_embeddings", False) or False,
                "tie_word_embeddings")
    text = dataclasses.replace(text, qkv_bias=True, tie_word_embeddings=tie,
                               rope=dataclasses.replace(text.rope, mrope_section=section))
    raw_vision = d.get("vision_config", {})
    if not isinstance(raw_vision, dict):
        raise ConfigError(f"vision_config must be a JSON object, got {type(raw_vision).__name__}")
    try:
        vision = Qwen25VisionConfig.from_hf(raw_vision)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"vision_config: {e}") from None
    if vision.out_hidden_size != text.hidden_size:
        raise ConfigError(f"vision_config.out_hidden_size {vision.out_hidden_size} must equal the decoder's "
                          f"hidden_size {text.hidden_size} (the merger's output is the decoder's input)")
    ids = {}
    for name, default in TOKEN_DEFAULTS.items():
        source = td if name in td else d
        value = _token_id(source.get(name, default), name)
        if value is None or not 0 <= value < text.vocab_size:
            raise ConfigError(f"{name} {value!r} is outside the vocabulary [0, {text.vocab_size})")
        ids[name] = value
    return Qwen25VLConfig(vision=vision, text=text, **ids)
