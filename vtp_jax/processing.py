"""Images + prompts → model arrays, through the checkpoint's own transformers processor and chat template.

The processor (tokenizer, image processor, chat template) is loaded with ``transformers.AutoProcessor`` from the
converted directory, which carries the original files. Prompts are left-padded to a bucket length (a multiple of
``bucket``) so a new prompt of similar length reuses the compiled prefill.

Preprocessing note: transformers' ``CLIPImageProcessor`` resizes the shortest side and centre-crops; the original
LLaVA-1.5 code first pads to a square with the mean colour (``image_aspect_ratio="pad"``). We follow transformers.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from PIL import Image, UnidentifiedImageError


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
    """input_ids int32 [B, T] left-padded; attention_mask int32 [B, T]; pixel_values float32 [B, 3, H, W];
    prompt_ids: each row's unpadded ids (image placeholders expanded)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    pixel_values: np.ndarray
    prompt_ids: list[list[int]]


class Processor:
    """Wraps the checkpoint's ``transformers`` processor.

    Args:
      model_dir: a converted (or HF) directory with tokenizer and image-processor files.
      image_token_id: the image placeholder id; num_visual_tokens: how many each prompt must hold after expansion.
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

    @property
    def pad_token_id(self) -> int:
        tok = self.tokenizer
        return int(tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0))

    def build_prompt(self, question: str) -> str:
        """The chat-template prompt for one user turn with one image (LLaVA-1.5 format if no template)."""
        if getattr(self.hf, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            return self.hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return f"USER: <image>\n{question} ASSISTANT:"

    def __call__(self, images: list[Image.Image], questions: list[str], *, bucket: int = 64) -> Batch:
        """Processes one image + one question per row. Raises InputError on a placeholder-count mismatch."""
        if len(images) != len(questions):
            raise InputError(f"{len(images)} images for {len(questions)} prompts")
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
        t = bucket_length(max(len(r) for r in rows), bucket)
        input_ids = np.full((len(rows), t), self.pad_token_id, np.int32)
        mask = np.zeros((len(rows), t), np.int32)
        for b, r in enumerate(rows):
            input_ids[b, t - len(r):] = r
            mask[b, t - len(r):] = 1
        return Batch(input_ids, mask, np.stack(pixels), rows)

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)
