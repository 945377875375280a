"""LLaVA-NeXT's processor: images + questions → a :class:`vtp_jax.processing.Batch` through transformers'
``LlavaNextProcessor`` (``models/llava_next/processing_llava_next.py``) and its PIL image processor
(``image_processing_pil_llava_next.py``: ``LlavaNextImageProcessorPil``, built directly so that loading never looks
for torchvision and never warns).

The image processor picks the best grid pinpoint for the image, resizes it into that resolution keeping the aspect
ratio, letterboxes it, cuts it into 336-pixel (``tile_size``) tiles and puts the whole image resized to one tile
first: ``pixel_values`` float32 [1, 1 + rows · cols, 3, S, S] and ``image_sizes`` (height, width). The processor
expands ``<image>`` to N_v placeholders (base tile + unpadded grid + one newline per row); N_v is checked against
the model's own layout (:func:`vtp_jax.modeling.anyres.layout_for_config`).

Rows of one batch may have different layouts (grid, unpad crop, hence N_v): ``image_size`` and ``grid`` are then
given per row (:func:`vtp_jax.processing.anyres_image_inputs`) and the generators pad the visual spans
(:mod:`vtp_jax.generation.visual_spans`).
"""

from __future__ import annotations

import os

import numpy as np

from vtp_jax.processing import (
    IMAGE_TOKEN, Batch, BaseProcessor, InputError, _quiet_transformers, _render_template, _rgb_images,
    anyres_image_inputs, load_hf_files,
)

# LLaVA-1.6-Mistral's format, used only when the checkpoint ships no chat template.
FALLBACK_TEMPLATE = "[INST] <image>\n{question} [/INST]"


class LlavaNextProcessor(BaseProcessor):
    """LLaVA-NeXT: tokenizer (``AutoTokenizer``), ``LlavaNextImageProcessorPil`` and transformers'
    ``LlavaNextProcessor`` (which expands ``<image>``) from one checkpoint directory.

    Args:
      model_dir: a converted (or HF) LLaVA-NeXT directory with tokenizer files, ``preprocessor_config.json`` (the
        grid pinpoints, tile size, CLIP mean / std) and optionally ``chat_template.jinja``.
      cfg: the :class:`vtp_jax.families.llava_next.config.LlavaNextConfig` (patch size, feature strategy and the
        tiling of the model: the layout and N_v of each image; ``image_token_id``).

    Raises InputError if the tokenizer or image processor files cannot be loaded.
    """

    def __init__(self, model_dir: str, cfg):
        import transformers
        from transformers import AutoTokenizer

        image_cls = getattr(transformers, "LlavaNextImageProcessorPil", None)
        if image_cls is None:  # older transformers: the numpy class is the plain one
            image_cls = transformers.LlavaNextImageProcessor

        def load():
            with _quiet_transformers():
                tok = AutoTokenizer.from_pretrained(model_dir)
                image = image_cls.from_pretrained(model_dir)
            template = None
            path = os.path.join(model_dir, "chat_template.jinja")
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    template = f.read()
            template = template or getattr(tok, "chat_template", None)
            return transformers.LlavaNextProcessor(
                image_processor=image, tokenizer=tok, patch_size=cfg.vision.patch_size,
                vision_feature_select_strategy=cfg.vision_feature_select_strategy, chat_template=template,
                num_additional_image_tokens=1,
            )

        self.hf = load_hf_files(model_dir, load)
        self.tokenizer = self.hf.tokenizer
        self.cfg = cfg
        self.image_token_id = int(cfg.image_token_id)

    def layout(self, image_size):
        """The :class:`vtp_jax.modeling.anyres.AnyresLayout` of an image of (height, width) ``image_size``."""
        from vtp_jax.modeling.anyres import layout_for_config

        return layout_for_config(self.cfg, tuple(int(v) for v in image_size))

    def build_prompt(self, question: str) -> str:
        """The chat-template prompt of one user turn (one image, then the question) plus the generation prompt;
        ``[INST] <image>\\n{question} [/INST]`` without a template."""
        if getattr(self.hf, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            return _render_template(lambda: self.hf.apply_chat_template(messages, add_generation_prompt=True,
                                                                        tokenize=False))
        return FALLBACK_TEMPLATE.format(question=question)

    def __call__(self, images, questions, *, bucket: int = 64) -> Batch:
        """One image + one question per row (any PIL mode: :func:`vtp_jax.processing.to_rgb` first).

        Returns a :class:`Batch`: input_ids / attention_mask int32 [B, T] left-padded to a multiple of ``bucket``,
        pixel_values float32 [B, max tiles, 3, S, S] (rows with fewer tiles padded with zero tiles), image_inputs
        ``{"pixel_values", "image_size": (height, width), "grid": (rows, cols)}`` (static Python ints; one pair per
        row when the images' layouts differ), num_visual_tokens N_v (the largest row's).

        Raises InputError when the image processor fails, when ``<image>`` is typed in a question, or when the
        processor's placeholder count disagrees with the model's layout (processor files that do not match
        config.json).
        """
        from vtp_jax.modeling.anyres import AnyresError

        self._check_pairs(images, questions)
        images = _rgb_images(images)
        rows, pixels, sizes, layouts = [], [], [], []
        for image, question in zip(images, questions):
            if IMAGE_TOKEN in question:
                raise InputError(f"do not type {IMAGE_TOKEN} in the question (the prompt holds one image marker)")
            try:
                enc = self.hf(images=[image], text=[self.build_prompt(question)], return_tensors="np")
            except InputError:
                raise
            except Exception as e:  # e.g. degenerate image sizes
                raise InputError(f"the LLaVA-NeXT processor failed: {type(e).__name__}: {e}") from None
            size = tuple(int(v) for v in np.asarray(enc["image_sizes"]).reshape(-1)[:2])
            try:
                layout = self.layout(size)
            except AnyresError as e:
                raise InputError(str(e)) from None
            ids = [int(i) for i in np.asarray(enc["input_ids"])[0]]
            n_img = sum(1 for i in ids if i == self.image_token_id)
            if n_img != layout.num_tokens:
                raise InputError(
                    f"the processor expanded <image> to {n_img} placeholders for an image of size {size}; the "
                    f"model's layout (grid {layout.grid}) needs {layout.num_tokens} — processor files that do not "
                    "match config.json (patch size, grid pinpoints, tile size)?"
                )
            px = np.asarray(enc["pixel_values"], np.float32)
            if px.ndim != 5 or px.shape[1] < layout.num_tiles:
                raise InputError(f"the image processor returned pixel_values of shape {px.shape}; the layout needs "
                                 f"[1, ≥{layout.num_tiles}, 3, {self.cfg.tile_size}, {self.cfg.tile_size}]")
            rows.append(ids)
            pixels.append(px[0, : layout.num_tiles])
            sizes.append(size)
            layouts.append(layout)
        input_ids, mask = self._pad(rows, bucket)
        tiles = max(lay.num_tiles for lay in layouts)
        pixel_values = np.stack([np.pad(px, ((0, tiles - px.shape[0]),) + ((0, 0),) * 3) for px in pixels])
        image_inputs = anyres_image_inputs(pixel_values, sizes, layouts)
        return Batch(input_ids, mask, pixel_values, rows, image_inputs, max(lay.num_tokens for lay in layouts))
