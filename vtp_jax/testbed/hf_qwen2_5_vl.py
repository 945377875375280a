"""Tiny random-weight Qwen2.5-VL checkpoints in Hugging Face format (transformers
``Qwen2_5_VLForConditionalGeneration``), for the parity tests. The weights are RANDOM: such a checkpoint is a
shape-faithful stand-in, never a real model (``config.json`` carries ``"vtp_random_weights": true``, which
vtp-convert keeps and vtp-generate reports).

Like :mod:`vtp_jax.testbed.hf_llava_next` this builder needs torch: transformers builds the model (so tensor names
and shapes are whatever the installed transformers defines) and the files are written in one of three naming
schemes. Findings for transformers 5.24 (``models/qwen2_5_vl/modeling_qwen2_5_vl.py``, ``conversion_mapping.py``):

* ``"memory"``: ``state_dict()`` names as they are — ``model.visual.*`` (``patch_embed.proj.weight`` [Dv, C, T, P, P]
  no bias, ``blocks.N.{norm1,norm2}.weight``, ``blocks.N.attn.{qkv,proj}.{weight,bias}``,
  ``blocks.N.mlp.{gate,up,down}_proj.{weight,bias}``, ``merger.ln_q.weight``, ``merger.mlp.{0,2}.{weight,bias}``),
  ``model.language_model.*`` (``embed_tokens.weight``, ``layers.N.self_attn.{q,k,v}_proj.{weight,bias}``,
  ``layers.N.self_attn.o_proj.weight``, ``layers.N.mlp.{gate,up,down}_proj.weight``,
  ``layers.N.{input,post_attention}_layernorm.weight``, ``norm.weight``) and ``lm_head.weight``. ``state_dict()``
  holds ``lm_head.weight`` even when the embeddings are tied (one storage, two names); this scheme writes both.
  Never sharded.
* ``"hub"``: the ``Qwen/Qwen2.5-VL-*`` hub files' names — ``visual.*`` (= ``model.visual.*`` without ``model.``),
  ``model.*`` for the language model (``model.embed_tokens.weight``, ``model.layers.0.self_attn.q_proj.weight``,
  ``model.norm.weight``) and ``lm_head.weight``, which is left out when ``tie_word_embeddings`` is true (as in the
  tied hub checkpoints, e.g. Qwen2.5-VL-3B). Written with ``safetensors.torch``: one ``model.safetensors``, or
  ``model-0000i-of-0000n.safetensors`` shards plus ``model.safetensors.index.json`` when ``max_shard_bytes`` is
  given.
* ``"transformers"``: ``model.save_pretrained``. transformers 5.24 maps ``Qwen2_5_VLForConditionalGeneration`` to
  the ``Qwen2VLForConditionalGeneration`` conversion (``^visual`` → ``model.visual``, ``^model(?!.(language_model|
  visual))`` → ``model.language_model``) and reverts it on save, so it writes exactly the hub names above (tied:
  ``lm_head.weight`` left out too), metadata ``{"format": "pt"}``; sharded with ``max_shard_size`` when
  ``max_shard_bytes`` is given.

``config.json`` is what a transformers-5 ``save_pretrained`` writes: nested ``text_config`` (model_type
``qwen2_5_vl_text``, ``rope_parameters = {"rope_type": "default", "rope_theta", "mrope_section"}``, bos / eos / pad
ids) and ``vision_config`` (model_type ``qwen2_5_vl_vision``), top-level ``image_token_id``, ``video_token_id``,
``vision_start_token_id``, ``vision_end_token_id``, ``tie_word_embeddings`` — not the flat transformers-4 layout
of the hub files (transformers reads both).

Processor files:

* tokenizer: a byte-level BPE (``Qwen2Tokenizer``: Qwen's split regex, NFC, byte-level) trained on a small corpus,
  320 entries with the specials at fixed ids: ``<|endoftext|>`` 0 (pad), ``<|im_start|>`` 1, ``<|im_end|>`` 2 (eos),
  ``<|vision_start|>`` 3, ``<|vision_end|>`` 4, ``<|image_pad|>`` 5, ``<|video_pad|>`` 6; no bos, no unk.
* image processor: ``Qwen2VLImageProcessorPil`` (``models/qwen2_vl/image_processing_pil_qwen2_vl.py``; needs no
  torchvision): patch 4, temporal patch 2, merge 2, CLIP mean / std, pixel bounds ``size = {"shortest_edge":
  MIN_PIXELS, "longest_edge": MAX_PIXELS}`` (transformers 5 keeps min / max pixels in those two keys).
* processor: transformers 5.24 cannot construct ``Qwen2_5_VLProcessor`` without torchvision (its
  ``video_processor`` attribute is class-checked even when None, and the video-processor lookup fails), so the
  image-only subclass :class:`vtp_jax.families.qwen2_5_vl.processing.ImageOnlyQwen25VLProcessor` saves the files;
  ``"processor_class"`` is then set to ``"Qwen2_5_VLProcessor"`` as transformers itself would write. Files:
  ``tokenizer.json``, ``tokenizer_config.json``, ``processor_config.json`` (the image processor nested under
  ``"image_processor"``, transformers 5's layout), ``chat_template.jinja`` (:data:`QWEN_CHAT_TEMPLATE`). Without
  torchvision ``AutoProcessor.from_pretrained`` still fails on such a directory (it looks for a video processor);
  ``Qwen2VLImageProcessorPil.from_pretrained`` and ``AutoTokenizer.from_pretrained`` load it.
"""

from __future__ import annotations

import json
import os

import transformers

from vtp_jax.testbed.hf_llava import _corpus, save_torch_safetensors

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>")
(ENDOFTEXT_ID, IM_START_ID, IM_END_ID, VISION_START_ID, VISION_END_ID, IMAGE_PAD_ID,
 VIDEO_PAD_ID) = range(len(SPECIAL_TOKENS))
PAD_ID, EOS_ID = ENDOFTEXT_ID, IM_END_ID
TOKENIZER_VOCAB = 320  # entries of the trained tokenizer (specials included); the model's vocab_size must be ≥ this
DEFAULT_SYSTEM = "You are a helpful assistant."

# Pixel bounds (height · width after resizing) of the tiny image processor; factor = patch · merge = 8. With them a
# 40 × 90 (width × height) image → 32 × 72 pixels, grid (1, 18, 8), 36 visual tokens; 100 × 50 → 64 × 32, (1, 8, 16),
# 32 tokens; 60 × 60 → 48 × 48, (1, 12, 12), 36 tokens.
MIN_PIXELS = 16 * 16  # 2 × 2 merged units
MAX_PIXELS = 48 * 48

# Qwen2-VL's ChatML format: a default system turn when the conversation opens without one, then per message
# "<|im_start|>{role}\n{content}<|im_end|>\n", every image item as "<|vision_start|><|image_pad|><|vision_end|>"
# (every video item with <|video_pad|>) in the order of the items; "Picture k: " / "Video k: " before them when
# add_vision_id is set; the generation prompt is "<|im_start|>assistant\n".
QWEN_CHAT_TEMPLATE = (
    "{%- set counts = namespace(image=0, video=0) -%}"
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' or 'image' in item or 'image_url' in item -%}"
    "{%- set counts.image = counts.image + 1 -%}"
    "{%- if add_vision_id -%}{{- 'Picture ' ~ counts.image ~ ': ' -}}{%- endif -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'video' or 'video' in item -%}"
    "{%- set counts.video = counts.video + 1 -%}"
    "{%- if add_vision_id -%}{{- 'Video ' ~ counts.video ~ ': ' -}}{%- endif -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in item -%}"
    "{{- item['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Odd sizes on purpose: text head_dim 10 (M-RoPE sections 1 + 2 + 2 = 5 frequencies), GQA 4 → 2, MLP widths that are
# no power of two; vision head_dim 12, windows of 16 px = 2 × 2 merged units, full attention in blocks 1 and 3
# (the tower of tests/test_qwen2_5_vl_vision.py).
TINY_QWEN = dict(
    vision_depth=4, vision_hidden=48, vision_heads=4, vision_mlp=88, patch_size=4, temporal_patch_size=2,
    spatial_merge_size=2, window_size=16, fullatt_block_indexes=(1, 3),
    text_hidden=40, text_layers=3, text_heads=4, text_kv_heads=2, text_mlp=72, vocab_size=336,
    max_position_embeddings=1024, rope_theta=1e6, mrope_section=(1, 2, 2), rms_norm_eps=1e-6,
)

HUB_PREFIXES = (  # transformers-5 state_dict() prefix → Qwen/Qwen2.5-VL-* hub prefix
    ("model.visual.", "visual."),
    ("model.language_model.", "model."),
    ("lm_head.", "lm_head."),
)


def hub_name(name: str) -> str:
    """The ``Qwen/Qwen2.5-VL-*`` name of a transformers-5 ``state_dict()`` name. Raises ValueError for a name of no
    known part."""
    for old, new in HUB_PREFIXES:
        if name.startswith(old):
            return new + name[len(old):]
    raise ValueError(f"no hub name for {name!r}")


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------

def _chat_corpus():
    """The LLaVA testbed corpus plus ChatML words, so that role names and the system prompt get merges."""
    yield from _corpus()
    for _ in range(8):
        yield f"system\n{DEFAULT_SYSTEM}"
        yield "user\nassistant\n"


def train_tokenizer(vocab_size: int = TOKENIZER_VOCAB):
    """A byte-level BPE ``Qwen2Tokenizer`` (Qwen's pre-tokenizer regex, NFC, byte-level decoder) trained on a
    built-in corpus; deterministic.

    Returns a tokenizer of ``vocab_size`` entries (at most; the corpus bounds the merges) whose specials are
    :data:`SPECIAL_TOKENS` at ids 0 … 6 (``<|endoftext|>`` = pad, ``<|im_end|>`` = eos, no bos / unk), all
    special tokens; encoding adds nothing. Raises ValueError when ``vocab_size`` leaves no room for merges.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size <= len(SPECIAL_TOKENS) + len(alphabet):
        raise ValueError(f"vocab_size must be > {len(SPECIAL_TOKENS) + len(alphabet)}, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=alphabet, min_frequency=2, show_progress=False)
    tok.train_from_iterator(list(_chat_corpus()), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    out = transformers.Qwen2Tokenizer(
        vocab=model["vocab"], merges=merges, unk_token=None, bos_token=None, eos_token=SPECIAL_TOKENS[EOS_ID],
        pad_token=SPECIAL_TOKENS[PAD_ID], extra_special_tokens=list(SPECIAL_TOKENS[1:]), model_max_length=4096)
    ids = out.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    assert ids == list(range(len(SPECIAL_TOKENS))), ids
    return out


# ----------------------------------------------------------------------------------------------
# Config and weights
# ----------------------------------------------------------------------------------------------

def tiny_qwen2_5_vl_config(*, vision_depth: int = 4, vision_hidden: int = 48, vision_heads: int = 4,
                           vision_mlp: int = 88, patch_size: int = 4, temporal_patch_size: int = 2,
                           spatial_merge_size: int = 2, window_size: int = 16, fullatt_block_indexes=(1, 3),
                           text_hidden: int = 40, text_layers: int = 3, text_heads: int = 4, text_kv_heads: int = 2,
                           text_mlp: int = 72, vocab_size: int = 336, max_position_embeddings: int = 1024,
                           rope_theta: float = 1e6, mrope_section=(1, 2, 2), rms_norm_eps: float = 1e-6,
                           tie_word_embeddings: bool = False) -> transformers.Qwen2_5_VLConfig:
    """A small ``Qwen2_5_VLConfig`` (defaults: :data:`TINY_QWEN`): windowed ViT (silu GLU MLP, RMSNorm, 2-D rope)
    + 2 × 2 patch merger into the text width + Qwen2 decoder (q/k/v biases, RMSNorm, M-RoPE with
    ``mrope_section``), no sliding window. Token ids: the tokenizer's (:data:`SPECIAL_TOKENS`): image 5, video 6,
    vision start / end 3 / 4; text bos / pad 0 (``<|endoftext|>``, as the hub's bos 151643), eos 2 (``<|im_end|>``).

    Raises ValueError when ``mrope_section`` does not sum to head_dim / 2, the text width does not split into
    ``text_heads``, or ``vocab_size`` cannot hold the tokenizer (:data:`TOKENIZER_VOCAB`).
    """
    if text_hidden % text_heads:
        raise ValueError(f"text_hidden {text_hidden} must be a multiple of text_heads {text_heads}")
    head_dim = text_hidden // text_heads
    if head_dim % 2 or sum(mrope_section) != head_dim // 2:
        raise ValueError(f"mrope_section {list(mrope_section)} must sum to head_dim / 2 = {head_dim / 2}")
    if vocab_size < TOKENIZER_VOCAB:
        raise ValueError(f"vocab_size {vocab_size} cannot hold the tokenizer's {TOKENIZER_VOCAB} entries")
    vision = transformers.Qwen2_5_VLVisionConfig(
        depth=vision_depth, hidden_size=vision_hidden, num_heads=vision_heads, intermediate_size=vision_mlp,
        out_hidden_size=text_hidden, in_channels=3, patch_size=patch_size, temporal_patch_size=temporal_patch_size,
        spatial_merge_size=spatial_merge_size, window_size=window_size,
        fullatt_block_indexes=[int(i) for i in fullatt_block_indexes], hidden_act="silu")
    text = transformers.Qwen2_5_VLTextConfig(
        vocab_size=vocab_size, hidden_size=text_hidden, intermediate_size=text_mlp, num_hidden_layers=text_layers,
        num_attention_heads=text_heads, num_key_value_heads=text_kv_heads, hidden_act="silu",
        max_position_embeddings=max_position_embeddings, rms_norm_eps=rms_norm_eps, use_sliding_window=False,
        max_window_layers=text_layers,
        rope_parameters={"rope_type": "default", "rope_theta": float(rope_theta),
                         "mrope_section": [int(s) for s in mrope_section]},
        bos_token_id=ENDOFTEXT_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    return transformers.Qwen2_5_VLConfig(
        vision_config=vision, text_config=text, image_token_id=IMAGE_PAD_ID, video_token_id=VIDEO_PAD_ID,
        vision_start_token_id=VISION_START_ID, vision_end_token_id=VISION_END_ID,
        tie_word_embeddings=tie_word_embeddings, architectures=["Qwen2_5_VLForConditionalGeneration"])


def widen_qwen_weights(model):
    """Re-draws a torch model's parameters in place from torch's global generator (seed it first) so that
    activations are O(1): RMSNorm scales (``*norm*.weight``, ``merger.ln_q.weight``) 1 + N(0, 0.2²), matrices and
    convolution kernels N(0, 1/fan_in) (fan_in = the elements of one output row), biases N(0, 0.1²). Tied
    parameters are drawn once. Returns ``model``."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and name.endswith("weight") and ("norm" in name or "ln_q" in name):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif p.ndim >= 2:
                p.copy_(torch.randn_like(p) * p[0].numel() ** -0.5)
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return model


def random_qwen2_5_vl(config: transformers.Qwen2_5_VLConfig, seed: int = 0):
    """A seeded fp32 ``Qwen2_5_VLForConditionalGeneration`` in eval mode with O(0.1 … 1) weights
    (:func:`widen_qwen_weights`): transformers' own initialiser (std 0.02, zero biases, unit norms) makes
    activations so small that parity would be met trivially. RANDOM weights: never a real model."""
    import torch

    torch.manual_seed(seed)
    return widen_qwen_weights(transformers.Qwen2_5_VLForConditionalGeneration(config).eval())


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------

def image_processor(config: transformers.Qwen2_5_VLConfig, *, min_pixels: int = MIN_PIXELS,
                    max_pixels: int = MAX_PIXELS):
    """The tiny checkpoint's ``Qwen2VLImageProcessorPil``: smart_resize to multiples of patch · merge within
    [min_pixels, max_pixels] (bicubic), rescale 1/255, CLIP mean / std, patches of the config's sizes."""
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

    vc = config.vision_config
    return transformers.Qwen2VLImageProcessorPil(
        do_resize=True, size={"shortest_edge": int(min_pixels), "longest_edge": int(max_pixels)},
        resample=PILImageResampling.BICUBIC, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD, do_convert_rgb=True, patch_size=vc.patch_size,
        temporal_patch_size=vc.temporal_patch_size, merge_size=vc.spatial_merge_size)


def save_processor(out_dir: str | os.PathLike, config: transformers.Qwen2_5_VLConfig, tokenizer=None, *,
                   min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> None:
    """Saves tokenizer (:func:`train_tokenizer` unless given), ``Qwen2VLImageProcessorPil``
    (:func:`image_processor`) and the processor with :data:`QWEN_CHAT_TEMPLATE` to ``out_dir`` (files: module
    docstring). Needs no torchvision."""
    from vtp_jax.families.qwen2_5_vl.processing import ImageOnlyQwen25VLProcessor

    out_dir = os.fspath(out_dir)
    tokenizer = tokenizer or train_tokenizer()
    processor = ImageOnlyQwen25VLProcessor(
        image_processor=image_processor(config, min_pixels=min_pixels, max_pixels=max_pixels), tokenizer=tokenizer,
        chat_template=QWEN_CHAT_TEMPLATE)
    processor.save_pretrained(out_dir)
    for name in ("processor_config.json", "tokenizer_config.json"):  # the name transformers' own class writes
        path = os.path.join(out_dir, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            data["processor_class"] = "Qwen2_5_VLProcessor"
            with open(path, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2, sort_keys=True, ensure_ascii=False)
                f.write("\n")



def write_qwen2_5_vl(model, out_dir: str | os.PathLike, *, names: str = "hub",
                     max_shard_bytes: int | None = None) -> str:
    """Writes ``model`` (a ``Qwen2_5_VLForConditionalGeneration``) with its config (``vtp_random_weights`` set),
    generation config and processor files to ``out_dir`` in naming scheme ``names`` ("hub", "transformers" or
    "memory"; see the module docstring), sharded when ``max_shard_bytes`` is given ("memory" is never sharded).
    Returns ``out_dir`` as a string.

    Raises ValueError for an unknown scheme, or ``max_shard_bytes`` with "memory".
    """
    if names not in ("hub", "transformers", "memory"):
        raise ValueError(f"names must be 'hub', 'transformers' or 'memory', got {names!r}")
    if names == "memory" and max_shard_bytes is not None:
        raise ValueError("the 'memory' scheme is written as one file")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    config = model.config
    config.vtp_random_weights = True  # carried into the converted checkpoint: outputs say the weights are random
    if names == "transformers":
        kwargs = {} if max_shard_bytes is None else {"max_shard_size": max_shard_bytes}
        model.save_pretrained(out_dir, **kwargs)
    else:
        state = model.state_dict()
        if names == "hub":
            tied = config.tie_word_embeddings
            items = [(hub_name(k), v) for k, v in state.items() if not (tied and k == "lm_head.weight")]
        else:
            items = list(state.items())
        items = [(k, v.detach().clone().contiguous()) for k, v in items]
        save_torch_safetensors(items, out_dir, max_shard_bytes)
        config.save_pretrained(out_dir)
    transformers.GenerationConfig.from_model_config(config).save_pretrained(out_dir)
    save_processor(out_dir, config)
    return out_dir


def build_tiny_qwen2_5_vl(out_dir: str | os.PathLike, *, names: str = "hub", max_shard_bytes: int | None = None,
                          seed: int = 0, **config_kwargs):
    """A random tiny Qwen2.5-VL (``tiny_qwen2_5_vl_config(**config_kwargs)``, :func:`random_qwen2_5_vl`) written
    by :func:`write_qwen2_5_vl`. Returns (``out_dir`` as a string, the torch model). RANDOM weights."""
    model = random_qwen2_5_vl(tiny_qwen2_5_vl_config(**config_kwargs), seed)
    return write_qwen2_5_vl(model, out_dir, names=names, max_shard_bytes=max_shard_bytes), model
