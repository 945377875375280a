"""Model configurations, read from Hugging Face ``config.json`` files.

The dataclasses are frozen (hashable) so they can be closed over by jitted functions. Field names follow the
Hugging Face ones (``hidden_size``, ``num_attention_heads`` …) so a reader can check them against ``config.json``.

Sources: transformers ``CLIPVisionConfig``, ``SiglipVisionConfig``, ``LlamaConfig``, ``LlavaConfig`` (5.x), and
``modeling_rope_utils`` for the ``rope_parameters`` / legacy ``rope_theta`` + ``rope_scaling`` layouts.
"""

from __future__ import annotations

import dataclasses
import math
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
    """Rotary position embedding parameters (``rope_type`` "default" or "llama3").

    ``mrope_section``: multimodal RoPE (Qwen2-VL / Qwen2.5-VL, transformers ``Qwen2_5_VLRotaryEmbedding``): the
    head_dim / 2 frequencies are split into three consecutive chunks of these sizes, rotated by the temporal, height
    and width position of a token (positions int [B, T, 3]); None: 1-D RoPE. A token whose three positions are equal
    (every text token) is rotated exactly as by 1-D RoPE.
    """

    rope_type: str = "default"
    theta: float = 10000.0
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    mrope_section: tuple[int, ...] | None = None


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
    attention_bias: bool = False  # biases on q/k/v and o projections (Llama's flag)
    mlp_bias: bool = False
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    causal: bool = True
    qkv_bias: bool = False  # biases on q/k/v only, none on o_proj (Qwen2)
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


# --- field validation -------------------------------------------------------------------------------------------------
# Every structural field is checked where it is read, and a bad one raises ConfigError naming the field as it is
# spelled in config.json ("text_config.num_attention_heads", "vision_config.patch_size", "rope_parameters.factor").

ACTIVATION_NAMES = ("quick_gelu", "gelu", "gelu_pytorch_tanh", "silu")  # vtp_jax.modeling.layers.ACTIVATIONS


INT32_MAX = 2**31 - 1  # sizes and token ids beyond this cannot be array dimensions / int32 ids


def _whole(value: Any, name: str, *, lo: int | None = 1, hi: int = INT32_MAX) -> int:
    """``value`` as an int in [``lo``, ``hi``] (``lo`` None: ≥ -2³¹); a float with an integral value is accepted,
    bools and strings are not.

    Raises:
        ConfigError: "<name> must be a whole number in [lo, hi], got …".
    """
    low = -INT32_MAX - 1 if lo is None else lo
    bound = f" in [{low}, {hi}]"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a whole number{bound}, got {value!r}")
    if isinstance(value, float):
        if not value.is_integer():  # also nan / inf
            raise ConfigError(f"{name} must be a whole number{bound}, got {value!r}")
        value = int(value)
    if not low <= value <= hi:
        raise ConfigError(f"{name} must be a whole number{bound}, got {value}")
    return value


def _real(value: Any, name: str, *, positive: bool = True) -> float:
    """``value`` as a finite float (> 0 when ``positive``).

    Raises:
        ConfigError: "<name> must be a finite number > 0, got …".
    """
    want = "a finite number > 0" if positive else "a finite number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be {want}, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0):
        raise ConfigError(f"{name} must be {want}, got {value!r}")
    return value


def _flag(value: Any, name: str) -> bool:
    """A JSON boolean (``"false"`` is a string, not False: refused rather than read as True)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {value!r}")
    return value


def _object(value: Any, name: str) -> dict:
    """A JSON object (None → {})."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a JSON object, got {type(value).__name__} {value!r:.60}")
    return value


def _token_id(value: Any, name: str) -> int | None:
    """A token id (any int) or None."""
    return None if value is None else _whole(value, name, lo=None)


def _as_tuple(x: Any, name: str = "token id") -> tuple[int, ...]:
    """An int or a list of ints → tuple of ints (None → ()); ConfigError naming ``name`` otherwise."""
    if x is None:
        return ()
    if isinstance(x, (list, tuple)):
        return tuple(_whole(v, name, lo=None) for v in x)
    return (_whole(x, name, lo=None),)


def _feature_layers(value: Any, n_layers: int, name: str = "vision_feature_layer") -> tuple[int, ...]:
    """``vision_feature_layer``: a layer index or a non-empty list of them, each in [-(n+1), n]."""
    layers = _as_tuple(value, name)
    if not layers:
        raise ConfigError(f"{name} must name at least one layer, got {value!r}")
    for layer in layers:
        if not -(n_layers + 1) <= layer <= n_layers:
            raise ConfigError(f"{name} {layer} out of range for {n_layers} layers")
    return layers


def rope_from_hf(d: dict, where: str = "") -> RopeConfig:
    """Reads RoPE parameters from a text config dict, new (``rope_parameters``) or legacy layout.

    ``where`` prefixes field names in error messages (e.g. "text_config.").

    Raises:
        ConfigError: an unsupported ``rope_type``, or a theta / factor that is not a finite number > 0, a llama3
        ``low_freq_factor`` not below ``high_freq_factor``, a bad ``original_max_position_embeddings``.
    """
    given = _object(d.get("rope_parameters"), f"{where}rope_parameters")
    legacy = _object(d.get("rope_scaling"), f"{where}rope_scaling")
    params = {**legacy, **given}

    def name(key: str) -> str:  # where a value came from (or belongs), as config.json spells it
        if key in given or (key not in legacy and given and key != "rope_theta"):
            return f"{where}rope_parameters.{key}"
        if key in legacy or (legacy and key != "rope_theta"):
            return f"{where}rope_scaling.{key}"
        return f"{where}{key}"

    rope_type = params.get("rope_type", params.get("type"))
    rope_type = "default" if rope_type is None else rope_type
    if not isinstance(rope_type, str) or rope_type not in ("default", "llama3"):
        raise ConfigError(f"unsupported {name('rope_type')} {rope_type!r} (supported: default, llama3)")
    theta = params.get("rope_theta", d.get("rope_theta"))
    theta = 10000.0 if theta is None else _real(theta, name("rope_theta"))
    if rope_type == "default":
        return RopeConfig(theta=theta)
    if params.get("factor") is None:
        raise ConfigError(f"{name('factor')} is missing: llama3 rope scaling needs a factor")
    low = _real(_get(params, "low_freq_factor", 1.0), name("low_freq_factor"))
    high = _real(_get(params, "high_freq_factor", 4.0), name("high_freq_factor"))
    if not low < high:
        raise ConfigError(f"{name('low_freq_factor')} {low} must be below {name('high_freq_factor')} {high}")
    original = params.get("original_max_position_embeddings")
    original_name = name("original_max_position_embeddings")
    if original is None:
        original, original_name = _get(d, "max_position_embeddings", 8192), f"{where}max_position_embeddings"
    return RopeConfig(
        rope_type="llama3",
        theta=theta,
        factor=_real(params["factor"], name("factor")),
        low_freq_factor=low,
        high_freq_factor=high,
        original_max_position_embeddings=_whole(original, original_name),
    )


def text_config_from_hf(d: dict, *, causal: bool = True, where: str = "",
                        names: dict[str, str] | None = None) -> TextConfig:
    """Builds a :class:`TextConfig` from a Llama-style ``text_config`` dict (HF defaults where absent).

    Args:
      d: the text config (Llama names).
      causal: False for LLaDA's bidirectional decoder.
      where: prefix of field names in error messages ("text_config." for LLaVA, "" for LLaDA-V's top level).
      names: {Llama name: the name config.json used} for fields read through an alias (LLaDA's ``n_heads`` …).

    Raises:
        ConfigError: naming the field — sizes / counts that are not whole numbers ≥ 1, ``hidden_size`` not divisible
        by ``num_attention_heads`` (without an explicit ``head_dim``), ``num_attention_heads`` not a multiple of
        ``num_key_value_heads``, an odd ``head_dim`` (RoPE rotates pairs), ``rms_norm_eps`` not a finite number > 0,
        flags that are not booleans, token ids that are not integers, an unsupported ``hidden_act`` or RoPE.
    """
    names = names or {}

    def field(key: str) -> str:
        return f"{where}{names.get(key, key)}"

    def size(key: str, default: int) -> int:
        return _whole(_get(d, key, default), field(key))

    hidden = size("hidden_size", 4096)
    heads = size("num_attention_heads", 32)
    kv_heads = size("num_key_value_heads", heads)
    if heads % kv_heads:
        raise ConfigError(f"{field('num_attention_heads')} {heads} is not a multiple of "
                          f"{field('num_key_value_heads')} {kv_heads}")
    if d.get("head_dim") is None:
        if hidden % heads:
            raise ConfigError(f"{field('hidden_size')} {hidden} is not divisible by {field('num_attention_heads')} "
                              f"{heads} (give head_dim to use another head size)")
        head_dim = hidden // heads
    else:
        head_dim = size("head_dim", 0)
    if head_dim % 2:
        raise ConfigError(f"{field('head_dim')} {head_dim} must be even (rotary embeddings rotate pairs of channels)")
    act = _get(d, "hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"unsupported {field('hidden_act')} {act!r} (Llama uses silu)")
    return TextConfig(
        vocab_size=size("vocab_size", 32000),
        hidden_size=hidden,
        intermediate_size=size("intermediate_size", 11008),
        num_hidden_layers=size("num_hidden_layers", 32),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=_real(_get(d, "rms_norm_eps", 1e-6), field("rms_norm_eps")),
        max_position_embeddings=size("max_position_embeddings", 2048),
        rope=rope_from_hf(d, where),
        attention_bias=_flag(_get(d, "attention_bias", False), field("attention_bias")),
        mlp_bias=_flag(_get(d, "mlp_bias", False), field("mlp_bias")),
        tie_word_embeddings=_flag(_get(d, "tie_word_embeddings", False), field("tie_word_embeddings")),
        causal=causal,
        bos_token_id=_token_id(d.get("bos_token_id"), field("bos_token_id")),
        eos_token_id=_as_tuple(d.get("eos_token_id"), field("eos_token_id")),
        pad_token_id=_token_id(d.get("pad_token_id"), field("pad_token_id")),
    )


_VISION_DEFAULTS = {  # LlavaConfig's default vision tower (CLIP ViT-L/14-336)
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
}


def vision_config_from_hf(d: dict, where: str = "vision_config.") -> VisionConfig:
    """Builds a :class:`VisionConfig` from a ``vision_config`` dict (``clip_vision_model`` or ``siglip_vision_model``).

    ``image_size`` need not be a multiple of ``patch_size`` (the strided patch convolution floors, as in
    transformers), but it must hold at least one patch.

    Raises:
        ConfigError: naming the field — an unsupported ``model_type`` / ``hidden_act``, sizes that are not whole
        numbers ≥ 1, ``hidden_size`` not divisible by ``num_attention_heads``, ``image_size`` < ``patch_size``,
        ``num_channels`` other than 3 (images are fed as RGB), ``layer_norm_eps`` not a finite number > 0.
    """
    model_type = d.get("model_type", "clip_vision_model")
    if model_type in ("clip_vision_model", "clip"):
        kind, act = "clip", "quick_gelu"
    elif model_type in ("siglip_vision_model", "siglip"):
        kind, act = "siglip", "gelu_pytorch_tanh"
    else:
        raise ConfigError(f"unsupported {where}model_type {model_type!r} (supported: clip, siglip)")
    act = _get(d, "hidden_act", act)
    if act not in ("quick_gelu", "gelu_pytorch_tanh", "gelu"):
        raise ConfigError(f"unsupported {where}hidden_act {act!r}")

    def size(key: str) -> int:
        return _whole(_get(d, key, _VISION_DEFAULTS[key]), f"{where}{key}")

    hidden, heads = size("hidden_size"), size("num_attention_heads")
    if hidden % heads:
        raise ConfigError(f"{where}hidden_size {hidden} is not divisible by {where}num_attention_heads {heads}")
    image_size, patch_size = size("image_size"), size("patch_size")
    if image_size < patch_size:
        raise ConfigError(f"{where}image_size {image_size} is smaller than {where}patch_size {patch_size}: "
                          "an image would hold no patch")
    channels = _whole(_get(d, "num_channels", 3), f"{where}num_channels")
    if channels != 3:
        raise ConfigError(f"{where}num_channels must be 3 (images are fed as RGB), got {channels}")
    return VisionConfig(
        kind=kind,
        hidden_size=hidden,
        intermediate_size=size("intermediate_size"),
        num_hidden_layers=size("num_hidden_layers"),
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch_size,
        num_channels=channels,
        layer_norm_eps=_real(_get(d, "layer_norm_eps", 1e-5 if kind == "clip" else 1e-6), f"{where}layer_norm_eps"),
        hidden_act=act,
    )


def llava_config_from_hf(d: dict) -> LlavaConfig:
    """Builds a :class:`LlavaConfig` from a ``config.json`` dict with ``model_type == "llava"``.

    Raises:
        ConfigError: unknown ``model_type``, unsupported activation / RoPE type / feature strategy, or any
        structural field out of range (named as config.json spells it; see :func:`text_config_from_hf` and
        :func:`vision_config_from_hf`).
    """
    if d.get("model_type") != "llava":
        raise ConfigError(f"unsupported model_type {d.get('model_type')!r} (supported: llava)")
    text = dict(_object(d.get("text_config"), "text_config"))
    if d.get("tie_word_embeddings") is not None:
        tied = _flag(d["tie_word_embeddings"], "tie_word_embeddings")
        text.setdefault("tie_word_embeddings", tied)
    strategy = d.get("vision_feature_select_strategy", "default")
    if strategy not in ("default", "full"):
        raise ConfigError(f"unsupported vision_feature_select_strategy {strategy!r} (default or full)")
    key = "image_token_id" if d.get("image_token_id") is not None else "image_token_index"
    image_token = _whole(_get(d, key, 32000), key, lo=0)
    vision = vision_config_from_hf(_object(d.get("vision_config"), "vision_config") or
                                   {"model_type": "clip_vision_model"})
    layers = _feature_layers(d.get("vision_feature_layer", -2), vision.num_hidden_layers)
    act = _get(d, "projector_hidden_act", "gelu")
    if act not in ACTIVATION_NAMES:
        raise ConfigError(f"unsupported projector_hidden_act {act!r} (supported: {', '.join(ACTIVATION_NAMES)})")
    return LlavaConfig(
        vision=vision,
        text=text_config_from_hf(text, where="text_config."),
        image_token_id=image_token,
        vision_feature_layer=layers,
        vision_feature_select_strategy=strategy,
        projector_hidden_act=act,
        projector_bias=_flag(_get(d, "multimodal_projector_bias", True), "multimodal_projector_bias"),
    )


def config_from_hf(d: dict) -> "LlavaConfig | LladaVConfig":
    """Dispatches on ``model_type`` through the family registry (:func:`vtp_jax.families.for_model_type`): "llava"
    → :func:`llava_config_from_hf`, "llava_llada" → :func:`llada_v_config_from_hf`.

    Raises:
        ConfigError: for anything this library cannot build a model from — unknown families, and every structural
        field of the wrong type or out of range (the message names the field). No other exception escapes for a
        JSON-shaped ``d``.
    """
    if not isinstance(d, dict):
        raise ConfigError(f"config.json must hold a JSON object, got {type(d).__name__}")
    from vtp_jax import families

    try:
        family = families.for_model_type(d.get("model_type"))
    except families.UnknownFamilyError as e:
        raise ConfigError(str(e)) from None
    try:
        return family.config_from_hf(d)
    except ConfigError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as e:  # a field no check above covers
        raise ConfigError(f"invalid config ({type(e).__name__}: {e})") from None


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


MAX_GRID_PINPOINTS = 4096  # candidate resolutions a range string may expand to (LLaDA-V's has 36)


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
            if max(a1 - a0 + 1, 0) * max(b1 - b0 + 1, 0) > MAX_GRID_PINPOINTS:
                raise ConfigError(f"image_grid_pinpoints {value!r}: more than {MAX_GRID_PINPOINTS} resolutions")
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
        if not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
            raise ConfigError(f"image_grid_pinpoints {value!r}: not a list of (height, width) pairs")
        out = tuple((_whole(h, "image_grid_pinpoints", lo=None), _whole(w, "image_grid_pinpoints", lo=None))
                    for h, w in value)
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


def _llada_text_dict(d: dict) -> tuple[dict, str, dict[str, str]]:
    """The text-model fields of a LLaDA-V config: ``text_config`` if present, else the top level (Llama-style names,
    with LLaDA-8B's OLMo-style names accepted as aliases).

    Returns (fields with Llama names, prefix for error messages, {Llama name: the alias config.json used}).
    """
    if d.get("text_config") is not None:
        return dict(_object(d["text_config"], "text_config")), "text_config.", {}
    text = dict(d)
    names: dict[str, str] = {}
    for old, new in _LLADA_TEXT_ALIASES.items():
        if text.get(new) is None and text.get(old) is not None:
            text[new], names[new] = text[old], old
    if text.get("vocab_size") is None and text.get("embedding_size") is not None:
        text["vocab_size"], names["vocab_size"] = text["embedding_size"], "embedding_size"
    if "weight_tying" in text and "tie_word_embeddings" not in text:
        text["tie_word_embeddings"] = _flag(text["weight_tying"], "weight_tying")
    if text.get("hidden_act") is None and text.get("activation_type") is not None:
        act = text["activation_type"]
        text["hidden_act"] = "silu" if act in ("silu", "swiglu") else act
        names["hidden_act"] = "activation_type"
    return text, "", names


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
        vision tower, inconsistent sizes, or any structural field out of range (named as config.json spells it,
        aliases included: "n_heads must be a whole number ≥ 1, got 0").
    """
    import re

    if d.get("model_type") != "llava_llada":
        raise ConfigError(f"unsupported model_type {d.get('model_type')!r} (expected llava_llada for LLaDA-V)")
    text_dict, where, names = _llada_text_dict(d)
    text_dict.setdefault("max_position_embeddings", 4096)
    text = text_config_from_hf(text_dict, causal=False, where=where, names=names)

    if d.get("vision_config") is not None:
        vd = dict(_object(d["vision_config"], "vision_config"))
        vd.setdefault("model_type", "siglip_vision_model")
        vision = vision_config_from_hf(vd)
    else:
        tower = _text(d.get("mm_vision_tower") or "siglip", "mm_vision_tower")
        if "siglip" not in tower.lower():
            raise ConfigError(
                f"mm_vision_tower {tower!r}: without a vision_config only LLaDA-V's SigLIP so400m tower is supported"
            )
        vision = vision_config_from_hf(_LLADA_V_VISION_DEFAULTS)
    if vision.kind != "siglip":
        raise ConfigError(f"LLaDA-V needs a SigLIP vision tower, got {vision.kind!r}")
    mm_hidden = d.get("mm_hidden_size")
    if mm_hidden is not None and _whole(mm_hidden, "mm_hidden_size") != vision.hidden_size:
        raise ConfigError(f"mm_hidden_size {mm_hidden} does not match the vision hidden size {vision.hidden_size}")

    layers = _feature_layers(d.get("vision_feature_layer", -1), vision.num_hidden_layers)

    projector = _get(d, "mm_projector_type", "mlp2x_gelu")
    if projector != "mlp2x_gelu":
        raise ConfigError(f"unsupported mm_projector_type {projector!r} (supported: mlp2x_gelu)")
    merge = _get(d, "mm_patch_merge_type", "spatial_unpad")
    if merge != "spatial_unpad":
        raise ConfigError(f"unsupported mm_patch_merge_type {merge!r} (supported: spatial_unpad)")
    aspect = _text(_get(d, "image_aspect_ratio", "anyres_max_4"), "image_aspect_ratio")
    m = re.fullmatch(r"anyres_max_(\d+)", aspect)
    if m:
        max_num_patches: int | None = int(m.group(1))
        if not 1 <= max_num_patches <= INT32_MAX:
            raise ConfigError(f"image_aspect_ratio {aspect!r}: N must be in [1, {INT32_MAX}]")
    elif aspect == "anyres":
        max_num_patches = None
    else:
        raise ConfigError(f"unsupported image_aspect_ratio {aspect!r} (supported: anyres_max_N, anyres)")
    pinpoints = parse_grid_pinpoints(_get(d, "image_grid_pinpoints", "(1x1),...,(6x6)"), vision.image_size)

    mask_name = "mask_token_id" if d.get("mask_token_id") is not None else f"{where}mask_token_id"
    mask = d.get("mask_token_id", text_dict.get("mask_token_id"))
    if mask is None:
        if text.vocab_size == LLADA_VOCAB_SIZE:
            mask = LLADA_MASK_TOKEN_ID
        else:
            raise ConfigError(
                "config.json has no mask_token_id: a LLaDA-V checkpoint needs the [MASK] token id for diffusion "
                f"sampling (LLaDA's is {LLADA_MASK_TOKEN_ID}); add \"mask_token_id\" to config.json"
            )
    mask = _whole(mask, mask_name, lo=None)
    if not 0 <= mask < text.vocab_size:
        raise ConfigError(f"{mask_name} {mask} is outside the vocabulary (size {text.vocab_size})")
    key = "image_token_index" if d.get("image_token_index") is not None else "image_token_id"
    image_token = _whole(_get(d, key, LLAVA_IMAGE_TOKEN_INDEX), key, lo=None)
    return LladaVConfig(
        vision=vision,
        text=text,
        image_token_id=image_token,
        vision_feature_layer=layers,
        image_grid_pinpoints=pinpoints,
        max_num_patches=max_num_patches,
        mask_token_id=mask,
    )
