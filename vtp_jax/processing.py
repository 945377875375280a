"""Images + prompts → model arrays, through the checkpoint's own tokenizer, chat template and image processor.

Two processors share one interface (:class:`BaseProcessor`): ``processor(images, questions, bucket=64)`` returns a
:class:`Batch` whose ``image_inputs`` dict is passed unchanged to the generator of the family.

* LLaVA (:class:`Processor`): the transformers ``LlavaProcessor`` is loaded with ``AutoProcessor`` from the converted
  directory (it carries the original files) and expands ``<image>`` itself. ``image_inputs = {"pixel_values"}``.
* LLaDA-V (:class:`LladaVProcessor`): LLaDA-V checkpoints ship no combined processor (and transformers 5 cannot build
  ``LlavaOnevisionProcessor`` without torchvision), so the tokenizer (``AutoTokenizer``, chat template included) and
  the anyres image processor (``AutoImageProcessor``) are loaded separately. The prompt text is split at ``<image>``,
  each part tokenized without special tokens (the template already holds BOS), and ``N_v`` copies of
  ``cfg.image_token_id`` (LLaVA's −200 in real checkpoints) are put in between — LLaDA-V's ``tokenizer_image_token``.
  ``N_v`` comes from the image's anyres layout. ``image_inputs = {"pixel_values", "image_size", "grid"}``.

Prompts are left-padded to a bucket length (a multiple of ``bucket``) so a new prompt of similar length reuses the
compiled programs.

Preprocessing note: transformers' ``CLIPImageProcessor`` resizes the shortest side and centre-crops; the original
LLaVA-1.5 code first pads to a square with the mean colour (``image_aspect_ratio="pad"``). We follow transformers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import threading
import warnings
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_TOKEN = "<image>"


class InputError(ValueError):
    """Bad user input: unreadable image, prompt too long, wrong number of image placeholders…"""


# PIL's own guard warns above Image.MAX_IMAGE_PIXELS and raises above twice that; vtp_jax applies one rule instead
# (see load_image) and never lets a DecompressionBombWarning / DecompressionBombError escape.
_PIL_LIMIT_LOCK = threading.Lock()
MAX_IMAGE_PIXELS_FLAG = "--max-image-pixels"


def default_max_image_pixels() -> int | None:
    """The pixel limit :func:`load_image` applies when given none: PIL's ``Image.MAX_IMAGE_PIXELS`` as it is now
    (89,478,485 pixels by default, about 9459 × 9459; None = no limit, if a caller of the Python API set it so)."""
    return Image.MAX_IMAGE_PIXELS


VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpeg", ".mpg", ".wmv", ".flv")


def load_image(path: str, *, max_pixels: int | None = None) -> Image.Image:
    """Opens an image file as an 8-bit RGB ``PIL.Image`` (mode "RGB"; every mode PIL opens, see :func:`to_rgb`).

    The one size rule: an image whose width × height exceeds ``max_pixels`` (default
    :func:`default_max_image_pixels`; the front ends' ``--max-image-pixels N``) is refused from its header, before
    anything is decoded; any image within the limit opens without a warning. Frames that PIL checks while decoding
    (GIF, ICO) are held to the same limit.

    Raises:
      InputError: the file is missing, is a video (by its extension, :data:`VIDEO_EXTENSIONS`: not supported), is
        not a readable image, or is over the pixel limit (the message names the file, its size, the limit and the
        flag that raises it).
    """
    if not os.path.isfile(path):
        raise InputError(f"image not found: {path}")
    if os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS:
        raise InputError(f"{path} is a video: video input is not supported (one still image per prompt)")
    limit = default_max_image_pixels() if max_pixels is None else int(max_pixels)
    if limit is not None and limit < 1:
        raise InputError(f"the image pixel limit must be ≥ 1, got {limit}")
    with _PIL_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS
        try:
            Image.MAX_IMAGE_PIXELS = None  # header only: the size is checked below, with a clear message
            with Image.open(path) as img:
                width, height = img.size
                if limit is not None and width * height > limit:
                    raise InputError(
                        f"image {path} is {width}×{height} = {width * height:,} pixels, over the limit of {limit:,} "
                        f"pixels (a guard against decompression bombs); {MAX_IMAGE_PIXELS_FLAG} N raises it"
                    )
                Image.MAX_IMAGE_PIXELS = limit  # frames PIL checks while decoding: the same limit
                img.load()
                return to_rgb(img)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InputError(
                f"image {path} holds a frame over the limit of {limit:,} pixels (a guard against decompression "
                f"bombs); {MAX_IMAGE_PIXELS_FLAG} N raises it"
            ) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
            if isinstance(e, InputError):
                raise
            raise InputError(f"cannot read image {path}: {e}") from None
        finally:
            Image.MAX_IMAGE_PIXELS = saved


ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any ``PIL.Image`` → an 8-bit RGB image of the same size (a new image; an RGB input without a transparency
    key is returned as is).

    High bit depths are scaled to 8 bits, never clipped (PIL's own ``convert`` clips 16-bit and float values at
    255 — a 16-bit grayscale PNG would turn white):

    * ``I;16``, ``I;16B``, ``I;16L``, ``I;16N`` (unsigned 16-bit): ``round(v · 255 / 65535)``.
    * ``I`` (signed 32-bit): when every value is in [0, 65535] (16-bit data: PNG, TIFF, PGM), as 16-bit; otherwise
      the value range is stretched linearly to 0 … 255 (``round((v − min) · 255 / (max − min))``; a constant image
      becomes 0).
    * ``F`` (32-bit float): values in [0, 1] → ``round(v · 255)``; else values in [0, 255] → ``round(v)``; else
      stretched like ``I``; NaN → 0, +inf → 255, −inf → 0 (the stretch uses the finite values).
    * Alpha (``LA``, ``La``, ``PA``, ``RGBA``, ``RGBa``, or a ``transparency`` entry in ``img.info``): composited
      over white (as transformers' ``convert_to_rgb``); premultiplied modes are un-premultiplied first.
    * ``LAB`` (8-bit CIE L*a*b*, D65 white: L = v · 100 / 255, a and b = v − 128): to sRGB by the CIE formulas
      (PIL has no LAB → RGB conversion).
    * ``1``, ``L``, ``P``, ``RGBX``, ``CMYK``, ``YCbCr``, ``HSV``: PIL's conversions (already 8-bit).

    The result is grayscale replicated into R, G and B for the single-channel modes.
    """
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray = _scale_to_uint8(np.asarray(img), mode)
        return Image.fromarray(np.repeat(gray[..., None], 3, axis=-1), "RGB")
    if mode == "LAB":
        return Image.fromarray(lab_to_srgb(np.asarray(img)), "RGB")
    if mode in ALPHA_MODES or "transparency" in img.info:
        if mode == "La":
            img = img.convert("LA")
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _scale_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """One channel of mode ``I;16*`` / ``I`` / ``F`` (any numeric dtype, [H, W]) → uint8 [H, W] (rules in
    :func:`to_rgb`)."""
    v = values.astype(np.float64)
    finite = np.isfinite(v)
    lo, hi = (float(v[finite].min()), float(v[finite].max())) if finite.any() else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535):
        out = v * (255.0 / 65535.0)
    elif mode == "F" and lo >= 0 and hi <= 1:
        out = v * 255.0
    elif mode == "F" and lo >= 0 and hi <= 255:
        out = v
    elif hi > lo:
        out = (v - lo) * (255.0 / (hi - lo))
    else:
        out = np.zeros_like(v)
    out = np.where(np.isnan(v), 0.0, np.where(np.isposinf(v), 255.0, np.where(np.isneginf(v), 0.0, out)))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)  # the clip only absorbs rounding at the ends


# CIE L*a*b* (D65 white) → XYZ → linear sRGB (IEC 61966-2-1 matrix).
_D65_WHITE = np.array([0.95047, 1.0, 1.08883])
_XYZ_TO_LINEAR_SRGB = np.array([[3.2404542, -1.5371385, -0.4985314],
                                [-0.9692660, 1.8760108, 0.0415560],
                                [0.0556434, -0.2040259, 1.0572252]])


def lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """PIL ``LAB`` pixels uint8 [..., 3] (L = v · 100 / 255, a = v − 128, b = v − 128) → sRGB uint8 [..., 3]
    (D65 white; colours outside the sRGB gamut are clipped to it)."""
    lab = lab.astype(np.float64)
    L, a, b = lab[..., 0] * (100.0 / 255.0), lab[..., 1] - 128.0, lab[..., 2] - 128.0
    fy = (L + 16.0) / 116.0
    f = np.stack([fy + a / 500.0, fy, fy - b / 200.0], axis=-1)
    eps = 6.0 / 29.0
    xyz = np.where(f > eps, f ** 3, 3 * eps * eps * (f - 4.0 / 29.0)) * _D65_WHITE
    rgb = np.clip(xyz @ _XYZ_TO_LINEAR_SRGB.T, 0.0, 1.0)
    srgb = np.where(rgb <= 0.0031308, 12.92 * rgb, 1.055 * rgb ** (1 / 2.4) - 0.055)
    return np.clip(np.round(srgb * 255.0), 0, 255).astype(np.uint8)


def _rgb_images(images) -> list:
    """``images`` with every ``PIL.Image`` through :func:`to_rgb` (other objects, e.g. arrays, unchanged)."""
    return [to_rgb(im) if isinstance(im, Image.Image) else im for im in images]


def bucket_length(n: int, bucket: int = 64) -> int:
    """Smallest multiple of ``bucket`` that is ≥ n."""
    return -(-n // bucket) * bucket


@dataclasses.dataclass
class Batch:
    """One processed batch.

    input_ids int32 [B, T] left-padded to a bucket; attention_mask int32 [B, T] (1 = real token);
    pixel_values float32: LLaVA [B, 3, H, W], LLaDA-V [B, n_tiles, 3, S, S];
    prompt_ids: each row's unpadded ids (image placeholders expanded);
    image_inputs: keyword arguments for the family's generator (LLaVA: {"pixel_values"}; LLaDA-V, LLaVA-NeXT:
    {"pixel_values", "image_size": (height, width), "grid": (rows, cols)} — static Python ints, one pair per row when
    the rows' images have different layouts: :func:`anyres_image_inputs`);
    num_visual_tokens: N_v, the placeholders each row holds (the largest row's when rows differ).
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    pixel_values: np.ndarray
    prompt_ids: list[list[int]]
    image_inputs: dict[str, Any] = dataclasses.field(default_factory=dict)
    num_visual_tokens: int = 0


def anyres_image_inputs(pixel_values: np.ndarray, sizes, layouts) -> dict[str, Any]:
    """The ``image_inputs`` of an anyres batch: ``{"pixel_values", "image_size", "grid"}``.

    pixel_values float32 [B, n_tiles, 3, S, S] (rows padded with zero tiles); sizes: each row's (height, width);
    layouts: each row's :class:`vtp_jax.modeling.anyres.AnyresLayout`. When every row shares one layout,
    ``image_size`` is row 0's (height, width) and ``grid`` its (rows, cols) — one static layout, as the model has
    always taken it; otherwise both are tuples of one pair per row (the model packs each row with its own layout and
    the generators pad the visual spans: :mod:`vtp_jax.generation.visual_spans`). Static values are Python ints.
    """
    if all(lay == layouts[0] for lay in layouts):
        return {"pixel_values": pixel_values, "image_size": tuple(sizes[0]), "grid": tuple(layouts[0].grid)}
    return {"pixel_values": pixel_values, "image_size": tuple(tuple(int(v) for v in s) for s in sizes),
            "grid": tuple(tuple(int(g) for g in lay.grid) for lay in layouts)}


@contextlib.contextmanager
def _quiet_transformers():
    """Silences transformers' info/warning logging (e.g. "model of type llava_llada…") while loading files."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


class BaseProcessor:
    """The shared interface: ``tokenizer``, ``image_token_id``, ``pad_token_id``, ``__call__``, ``decode``.

    Subclasses implement :meth:`__call__` (images + questions → :class:`Batch`) and :meth:`build_prompt`.
    """

    tokenizer: Any
    image_token_id: int

    @property
    def pad_token_id(self) -> int:
        tok = self.tokenizer
        return int(tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0))

    def build_prompt(self, question: str) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, images: list[Image.Image], questions: list[str], *, bucket: int = 64) -> Batch:  # pragma: no cover
        raise NotImplementedError

    def decode(self, ids) -> str:
        """Token ids → text, special tokens skipped."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def token_ids(self, tokens) -> tuple[int, ...]:
        """Ids of those ``tokens`` (strings) that are in the tokenizer's vocabulary, in order, without repeats."""
        vocab = self.tokenizer.get_vocab()
        out: list[int] = []
        for t in tokens:
            if t in vocab and int(vocab[t]) not in out:
                out.append(int(vocab[t]))
        return tuple(out)

    def _pad(self, rows: list[list[int]], bucket: int) -> tuple[np.ndarray, np.ndarray]:
        """Left-pads ``rows`` to a multiple of ``bucket``: (input_ids int32 [B, T], attention_mask int32 [B, T])."""
        t = bucket_length(max(len(r) for r in rows), bucket)
        input_ids = np.full((len(rows), t), self.pad_token_id, np.int32)
        mask = np.zeros((len(rows), t), np.int32)
        for b, r in enumerate(rows):
            input_ids[b, t - len(r):] = r
            mask[b, t - len(r):] = 1
        return input_ids, mask

    @staticmethod
    def _check_pairs(images, questions) -> None:
        if len(images) != len(questions):
            raise InputError(f"{len(images)} images for {len(questions)} prompts")
        if not images:
            raise InputError("no images / prompts to process")


TEMPLATE_FILES = ("chat_template.jinja",)  # transformers 5 also reads a template from these JSON files' field:
TEMPLATE_FIELDS = {"chat_template.json": "chat_template", "tokenizer_config.json": "chat_template",
                   "processor_config.json": "chat_template"}


def check_hf_files(model_dir: str) -> None:
    """Reads every JSON file and chat template of ``model_dir`` that transformers' processors load, so a damaged
    one is named (transformers' own errors often name neither the file nor the problem).

    Raises:
      InputError: ``"<dir>/<file>: unreadable JSON (…)"`` or ``"<dir>/<file>: the chat template does not parse
        (…)"`` — re-run vtp-convert, or fix the file.
    """
    import jinja2

    def bad(name, why):
        return InputError(f"{os.path.join(model_dir, name)}: {why} — re-run vtp-convert, or fix the file")

    templates = []
    for name in sorted(os.listdir(model_dir)):
        path = os.path.join(model_dir, name)
        if not os.path.isfile(path) or not (name.endswith(".json") or name in TEMPLATE_FILES):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise bad(name, f"unreadable ({e})") from None
        if name in TEMPLATE_FILES:
            templates.append((name, text))
            continue
        try:
            data = json.loads(text)
        except ValueError as e:
            raise bad(name, f"unreadable JSON ({e})") from None
        field = TEMPLATE_FIELDS.get(name)
        if field and isinstance(data, dict) and isinstance(data.get(field), str):
            templates.append((f"{name} ({field})", data[field]))
    for name, text in templates:
        try:
            jinja2.Environment().parse(text)
        except jinja2.TemplateError as e:
            raise bad(name.split(" ")[0], f"the chat template does not parse ({e})") from None


def load_hf_files(model_dir: str, load):
    """``load()`` (a transformers ``from_pretrained`` call) after :func:`check_hf_files`; any exception it raises
    becomes one InputError line naming ``model_dir``. Returns what ``load`` returns. Raises InputError."""
    check_hf_files(model_dir)
    try:
        return load()
    except Exception as e:  # transformers raises many types for missing / broken processor files
        why = " ".join(str(e).split())
        why = why if len(why) <= 300 else why[:297] + "..."
        raise InputError(f"cannot load the tokenizer / image processor from {model_dir}: {type(e).__name__}: "
                         f"{why}") from None


def _render_template(render) -> str:
    """``render()`` (an ``apply_chat_template`` call); a template that fails at render time is an InputError."""
    import jinja2

    try:
        return render()
    except jinja2.TemplateError as e:
        raise InputError(f"the checkpoint's chat template fails on this prompt ({type(e).__name__}: {e})") from None


class Processor(BaseProcessor):
    """LLaVA: wraps the checkpoint's ``transformers`` processor (``AutoProcessor``).

    Args:
      model_dir: a converted (or HF) directory with tokenizer and image-processor files.
      image_token_id: the image placeholder id; num_visual_tokens: how many each prompt must hold after expansion.

    Raises InputError if the processor files cannot be loaded.
    """

    def __init__(self, model_dir: str, *, image_token_id: int, num_visual_tokens: int):
        from transformers import AutoProcessor

        self.hf = load_hf_files(model_dir, lambda: AutoProcessor.from_pretrained(model_dir))
        self.tokenizer = self.hf.tokenizer
        self.image_token_id = image_token_id
        self.num_visual_tokens = num_visual_tokens

    def build_prompt(self, question: str) -> str:
        """The chat-template prompt for one user turn with one image (LLaVA-1.5 format if no template)."""
        if getattr(self.hf, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            return _render_template(lambda: self.hf.apply_chat_template(messages, add_generation_prompt=True,
                                                                        tokenize=False))
        return f"USER: <image>\n{question} ASSISTANT:"

    def __call__(self, images: list[Image.Image], questions: list[str], *, bucket: int = 64) -> Batch:
        """Processes one image + one question per row (any PIL mode: :func:`to_rgb` first). Raises InputError on a
        placeholder-count mismatch."""
        self._check_pairs(images, questions)
        images = _rgb_images(images)
        rows, pixels = [], []
        for image, question in zip(images, questions):
            enc = self.hf(images=image, text=self.build_prompt(question), return_tensors="np")
            ids = [int(i) for i in np.asarray(enc["input_ids"])[0]]
            n_img = sum(1 for i in ids if i == self.image_token_id)
            if n_img != self.num_visual_tokens:
                raise InputError(
                    f"prompt holds {n_img} image placeholder tokens after processing, the model expects "
                    f"{self.num_visual_tokens} (one image per prompt)"
                )
            rows.append(ids)
            pixels.append(np.asarray(enc["pixel_values"], np.float32)[0])
        input_ids, mask = self._pad(rows, bucket)
        pixel_values = np.stack(pixels)
        return Batch(input_ids, mask, pixel_values, rows, {"pixel_values": pixel_values}, self.num_visual_tokens)


LlavaProcessor = Processor

# LLaDA-8B-Instruct's chat format, used only when the tokenizer carries no chat template.
_LLADA_FALLBACK_TEMPLATE = (
    "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)


# LLaDA-V's conversation template ``conv_llava_llada`` (ML-GSAI/LLaDA-V, train/llava/conversation.py): its system
# turn, rendered through the tokenizer's chat template before the user turn.
LLADA_V_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)
PROMPT_FORMATS = ("official", "plain")
PROMPT_FORMAT_KEY = "vtp_prompt_format"  # config.json key naming a checkpoint's own prompt format


def checkpoint_prompt_format(model_dir: str) -> str:
    """The prompt format a LLaDA-V checkpoint directory declares in config.json (``"vtp_prompt_format"``; the
    testbeds trained here say ``"plain"``), else ``"official"``. Raises InputError for an unknown value."""
    path = os.path.join(model_dir, "config.json")
    try:
        with open(path, encoding="utf-8") as fh:
            value = json.load(fh).get(PROMPT_FORMAT_KEY, "official")
    except (OSError, ValueError, AttributeError):
        return "official"
    if value not in PROMPT_FORMATS:
        raise InputError(f"{path}: {PROMPT_FORMAT_KEY} must be one of {', '.join(PROMPT_FORMATS)}, got {value!r}")
    return value


class LladaVProcessor(BaseProcessor):
    """LLaDA-V: tokenizer and anyres image processor loaded separately; ``<image>`` expanded to N_v placeholders.

    Two prompt formats (``prompt_format``):

    - ``"official"`` — what LLaDA-V's own demo and lmms-eval model feed the model: the ``conv_llava_llada``
      system turn (:data:`LLADA_V_SYSTEM_PROMPT`), the user turn ``"<image>\n{question}"``, the assistant header,
      rendered by the tokenizer's chat template, then LLaVA's ``tokenizer_image_token`` (``llava/mm_utils.py``):
      the text is split at ``<image>``, every chunk is tokenized with the tokenizer's own special-token rule, and
      when the first chunk starts with BOS, one BOS is kept and the first token of every chunk is dropped — for a
      tokenizer that adds no BOS of its own, that is the first token after ``<image>``. Reproduced as the code
      does it.
    - ``"plain"`` — the format the testbeds here were trained with: the user turn alone, each side of ``<image>``
      tokenized without special tokens (nothing dropped).

    Args:
      model_dir: a converted (or LLaDA-V) directory with tokenizer files (chat template included) and an image
        processor config (``LlavaOnevisionImageProcessor``: anyres tiles, ``image_sizes``).
      cfg: the :class:`vtp_jax.config.LladaVConfig` (tiling parameters → the layout and N_v of each image;
        ``image_token_id``).
      prompt_format: ``"official"``, ``"plain"`` or None (the checkpoint's: :func:`checkpoint_prompt_format`).

    Raises InputError if the tokenizer or image processor cannot be loaded, or for an unknown prompt format.
    """

    def __init__(self, model_dir: str, cfg, *, prompt_format: str | None = None):
        from transformers import AutoImageProcessor, AutoTokenizer

        def both():
            with _quiet_transformers():
                return AutoTokenizer.from_pretrained(model_dir), AutoImageProcessor.from_pretrained(model_dir)

        self.tokenizer, self.image_processor = load_hf_files(model_dir, both)
        self.cfg = cfg
        self.image_token_id = int(cfg.image_token_id)
        if prompt_format is not None and prompt_format not in PROMPT_FORMATS:
            raise InputError(f"prompt format must be one of {', '.join(PROMPT_FORMATS)}, got {prompt_format!r}")
        self.prompt_format = prompt_format or checkpoint_prompt_format(model_dir)

    def layout(self, image_size):
        """The :class:`vtp_jax.modeling.anyres.AnyresLayout` of an image of (height, width) ``image_size``."""
        from vtp_jax.modeling.anyres import layout_for_config

        return layout_for_config(self.cfg, tuple(int(v) for v in image_size))

    def build_prompt(self, question: str) -> str:
        """The chat-template prompt: the system turn (official format only), the user turn
        ``"<image>\\n{question}"``, the assistant header."""
        content = f"{IMAGE_TOKEN}\n{question}"
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": content}]
            if self.prompt_format == "official":
                messages.insert(0, {"role": "system", "content": LLADA_V_SYSTEM_PROMPT})
            return _render_template(lambda: self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                                               tokenize=False))
        return _LLADA_FALLBACK_TEMPLATE.format(content=content)

    def encode_prompt(self, prompt: str, num_visual_tokens: int) -> list[int]:
        """Prompt text with exactly one ``<image>`` → ids with ``num_visual_tokens`` copies of ``image_token_id``
        (tokenized as :attr:`prompt_format` says; see the class doc).

        Raises InputError when the text holds no or several ``<image>`` markers (e.g. one typed in the question).
        """
        parts = prompt.split(IMAGE_TOKEN)
        if len(parts) != 2:
            raise InputError(
                f"the prompt must hold exactly one {IMAGE_TOKEN} marker, found {len(parts) - 1} "
                f"(do not type {IMAGE_TOKEN} in the question)"
            )
        if self.prompt_format == "official":  # LLaVA's tokenizer_image_token, one image
            bos = self.tokenizer.bos_token_id
            head, tail = (list(self.tokenizer(p)["input_ids"]) if p else [bos] for p in parts)
            if head and bos is not None and head[0] == bos:
                tail = tail[1:]  # the code keeps chunk 0's BOS and drops the first token of every later chunk
        else:
            head, tail = (self.tokenizer(p, add_special_tokens=False)["input_ids"] if p else [] for p in parts)
        return [int(i) for i in head] + [self.image_token_id] * num_visual_tokens + [int(i) for i in tail]

    def __call__(self, images: list[Image.Image], questions: list[str], *, bucket: int = 64) -> Batch:
        """Processes one image + one question per row.

        Images of any PIL mode are turned into 8-bit RGB first (:func:`to_rgb`). Returns a :class:`Batch` with
        pixel_values float32 [B, n_tiles, 3, S, S] (base tile first; rows padded with
        zero tiles by the image processor) and image_inputs {"pixel_values", "image_size", "grid"}.

        Images of different layouts share the batch (``image_size`` / ``grid`` per row, :func:`anyres_image_inputs`).
        Raises InputError when the image processor fails.
        """
        from vtp_jax.modeling.anyres import AnyresError

        self._check_pairs(images, questions)
        images = _rgb_images(images)
        try:
            enc = self.image_processor(images=list(images), return_tensors="np")
        except Exception as e:  # e.g. degenerate image sizes
            raise InputError(f"the image processor failed: {e}") from None
        pixel_values = np.asarray(enc["pixel_values"], np.float32)
        sizes = [tuple(int(v) for v in s) for s in np.asarray(enc["image_sizes"]).reshape(len(images), 2)]
        try:
            layouts = [self.layout(s) for s in sizes]
        except AnyresError as e:
            raise InputError(str(e)) from None
        need = max(lay.num_tiles for lay in layouts)
        if pixel_values.ndim != 5 or pixel_values.shape[1] < need:
            raise InputError(
                f"the image processor returned pixel_values of shape {pixel_values.shape}; the anyres layout needs "
                f"[B, ≥{need}, 3, {self.cfg.tile_size}, {self.cfg.tile_size}] (check its grid pinpoints)"
            )
        rows = [self.encode_prompt(self.build_prompt(q), lay.num_tokens) for q, lay in zip(questions, layouts)]
        input_ids, mask = self._pad(rows, bucket)
        image_inputs = anyres_image_inputs(pixel_values, sizes, layouts)
        return Batch(input_ids, mask, pixel_values, rows, image_inputs, max(lay.num_tokens for lay in layouts))


def load_processor(model_dir: str, cfg, *, prompt_format: str | None = None, **options) -> BaseProcessor:
    """The processor of ``cfg.family`` (``Family.processor``: "llava" → :class:`Processor`, "llada_v" →
    :class:`LladaVProcessor`, …). ``prompt_format``: LLaDA-V's prompt format (:class:`LladaVProcessor`; None = the
    checkpoint's). ``options``: the family's processor options (``Family.processor_options``, e.g. Qwen2.5-VL's
    ``min_pixels`` / ``max_pixels``); None values are left out.

    Raises InputError for an unknown family, unloadable processor files, a prompt format for a family that has
    none, or an option the family's processor does not take (named as its flag, ``--min-pixels``).
    """
    from vtp_jax import families

    try:
        family = families.get(cfg.family)
    except families.UnknownFamilyError as e:
        raise InputError(str(e)) from None
    options = {k: v for k, v in options.items() if v is not None}
    foreign = sorted(k for k in options if k not in family.processor_options)
    if foreign:
        owners = [f.name for f in families.families().values() if set(foreign) <= set(f.processor_options)]
        flags = ", ".join("--" + k.replace("_", "-") for k in foreign)
        raise InputError(f"{flags} apply to {' / '.join(owners) or 'no'} checkpoints, not to {family.name}")
    if options:
        if prompt_format is not None:
            raise InputError(f"prompt format {prompt_format!r} does not apply to {family.name} checkpoints")
        return family.processor(model_dir, cfg, **options)
    if prompt_format is None:
        return family.processor(model_dir, cfg)
    if prompt_format not in family.prompt_formats:
        raise InputError(f"prompt format {prompt_format!r} does not apply to {family.name} checkpoints (formats: "
                         f"{', '.join(family.prompt_formats) or 'none'})")
    return family.processor(model_dir, cfg, prompt_format=prompt_format)
