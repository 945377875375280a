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
import os
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_TOKEN = "<image>"


class InputError(ValueError):
    """Bad user input: unreadable image, prompt too long, wrong number of image placeholders…"""


def load_image(path: str) -> Image.Image:
    """Opens an image file as RGB. Raises InputError if it is missing or not a readable image."""
    if not os.path.isfile(path):
        raise InputError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"cannot read image {path}: {e}") from None


def bucket_length(n: int, bucket: int = 64) -> int:
    """Smallest multiple of ``bucket`` that is ≥ n."""
    return -(-n // bucket) * bucket


@dataclasses.dataclass
class Batch:
    """One processed batch.

    input_ids int32 [B, T] left-padded to a bucket; attention_mask int32 [B, T] (1 = real token);
    pixel_values float32: LLaVA [B, 3, H, W], LLaDA-V [B, n_tiles, 3, S, S];
    prompt_ids: each row's unpadded ids (image placeholders expanded);
    image_inputs: keyword arguments for the family's generator (LLaVA: {"pixel_values"}; LLaDA-V: {"pixel_values",
    "image_size": (height, width), "grid": (rows, cols)} — the last two static Python ints);
    num_visual_tokens: N_v, the placeholders each row holds.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    pixel_values: np.ndarray
    prompt_ids: list[list[int]]
    image_inputs: dict[str, Any] = dataclasses.field(default_factory=dict)
    num_visual_tokens: int = 0


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


class Processor(BaseProcessor):
    """LLaVA: wraps the checkpoint's ``transformers`` processor (``AutoProcessor``).

    Args:
      model_dir: a converted (or HF) directory with tokenizer and image-processor files.
      image_token_id: the image placeholder id; num_visual_tokens: how many each prompt must hold after expansion.

    Raises InputError if the processor files cannot be loaded.
    """

    def __init__(self, model_dir: str, *, image_token_id: int, num_visual_tokens: int):
        from transformers import AutoProcessor

        try:
            self.hf = AutoProcessor.from_pretrained(model_dir)
        except Exception as e:  # transformers raises many types for missing / broken processor files
            raise InputError(f"cannot load the tokenizer / image processor from {model_dir}: {e}") from None
        self.tokenizer = self.hf.tokenizer
        self.image_token_id = image_token_id
        self.num_visual_tokens = num_visual_tokens

    def build_prompt(self, question: str) -> str:
        """The chat-template prompt for one user turn with one image (LLaVA-1.5 format if no template)."""
        if getattr(self.hf, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            return self.hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return f"USER: <image>\n{question} ASSISTANT:"

    def __call__(self, images: list[Image.Image], questions: list[str], *, bucket: int = 64) -> Batch:
        """Processes one image + one question per row. Raises InputError on a placeholder-count mismatch."""
        self._check_pairs(images, questions)
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


class LladaVProcessor(BaseProcessor):
    """LLaDA-V: tokenizer and anyres image processor loaded separately; ``<image>`` expanded to N_v placeholders.

    Args:
      model_dir: a converted (or LLaDA-V) directory with tokenizer files (chat template included) and an image
        processor config (``LlavaOnevisionImageProcessor``: anyres tiles, ``image_sizes``).
      cfg: the :class:`vtp_jax.config.LladaVConfig` (tiling parameters → the layout and N_v of each image;
        ``image_token_id``).

    Raises InputError if the tokenizer or image processor cannot be loaded.
    """

    def __init__(self, model_dir: str, cfg):
        from transformers import AutoImageProcessor, AutoTokenizer

        try:
            with _quiet_transformers():
                self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
                self.image_processor = AutoImageProcessor.from_pretrained(model_dir)
        except Exception as e:  # transformers raises many types for missing / broken files
            raise InputError(f"cannot load the tokenizer / image processor from {model_dir}: {e}") from None
        self.cfg = cfg
        self.image_token_id = int(cfg.image_token_id)

    def layout(self, image_size):
        """The :class:`vtp_jax.modeling.anyres.AnyresLayout` of an image of (height, width) ``image_size``."""
        from vtp_jax.modeling.anyres import layout_for_config

        return layout_for_config(self.cfg, tuple(int(v) for v in image_size))

    def build_prompt(self, question: str) -> str:
        """The chat-template prompt of one user turn ``"<image>\\n{question}"`` plus the assistant header."""
        content = f"{IMAGE_TOKEN}\n{question}"
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": content}]
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return _LLADA_FALLBACK_TEMPLATE.format(content=content)

    def encode_prompt(self, prompt: str, num_visual_tokens: int) -> list[int]:
        """Prompt text with exactly one ``<image>`` → ids with ``num_visual_tokens`` copies of ``image_token_id``.

        Raises InputError when the text holds no or several ``<image>`` markers (e.g. one typed in the question).
        """
        parts = prompt.split(IMAGE_TOKEN)
        if len(parts) != 2:
            raise InputError(
                f"the prompt must hold exactly one {IMAGE_TOKEN} marker, found {len(parts) - 1} "
                f"(do not type {IMAGE_TOKEN} in the question)"
            )
        head, tail = (self.tokenizer(p, add_special_tokens=False)["input_ids"] if p else [] for p in parts)
        return [int(i) for i in head] + [self.image_token_id] * num_visual_tokens + [int(i) for i in tail]

    def __call__(self, images: list[Image.Image], questions: list[str], *, bucket: int = 64) -> Batch:
        """Processes one image + one question per row.

        Returns a :class:`Batch` with pixel_values float32 [B, n_tiles, 3, S, S] (base tile first; rows padded with
        zero tiles by the image processor) and image_inputs {"pixel_values", "image_size", "grid"}.

        Raises InputError when the image processor fails, or when the rows' images do not share one anyres layout
        (grid, unpad crop and downsampled size must agree, since they are static shapes of the compiled program).
        """
        from vtp_jax.modeling.anyres import AnyresError

        self._check_pairs(images, questions)
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
        for b, lay in enumerate(layouts[1:], 1):
            if lay != layouts[0]:
                raise InputError(
                    f"images of one batch must share one anyres layout: row 0 (size {sizes[0]}) has grid "
                    f"{layouts[0].grid} and {layouts[0].num_tokens} visual tokens, row {b} (size {sizes[b]}) has "
                    f"grid {lay.grid} and {lay.num_tokens}; process them in separate batches"
                )
        layout = layouts[0]
        if pixel_values.ndim != 5 or pixel_values.shape[1] < layout.num_tiles:
            raise InputError(
                f"the image processor returned pixel_values of shape {pixel_values.shape}; the anyres layout needs "
                f"[B, ≥{layout.num_tiles}, 3, {self.cfg.tile_size}, {self.cfg.tile_size}] (check its grid pinpoints)"
            )
        n_v = layout.num_tokens
        rows = [self.encode_prompt(self.build_prompt(q), n_v) for q in questions]
        input_ids, mask = self._pad(rows, bucket)
        image_inputs = {"pixel_values": pixel_values, "image_size": sizes[0], "grid": tuple(layout.grid)}
        return Batch(input_ids, mask, pixel_values, rows, image_inputs, n_v)


def load_processor(model_dir: str, cfg) -> BaseProcessor:
    """The processor for ``cfg.family``: "llava" → :class:`Processor`, "llada_v" → :class:`LladaVProcessor`.

    Raises InputError for another family or unloadable processor files.
    """
    if cfg.family == "llava":
        return Processor(model_dir, image_token_id=cfg.image_token_id, num_visual_tokens=cfg.num_visual_tokens)
    if cfg.family == "llada_v":
        return LladaVProcessor(model_dir, cfg)
    raise InputError(f"no processor for model family {cfg.family!r}")
