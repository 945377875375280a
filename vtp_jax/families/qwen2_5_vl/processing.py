"""Qwen2.5-VL's processor: images + questions → a :class:`vtp_jax.processing.Batch` through transformers'
``Qwen2_5_VLProcessor`` (``models/qwen2_5_vl/processing_qwen2_5_vl.py``) and its PIL image processor
(``models/qwen2_vl/image_processing_pil_qwen2_vl.py``: ``Qwen2VLImageProcessorPil``, so that no torchvision is needed).

The image processor resizes each image to its own resolution (``smart_resize``: both sides multiples of patch ·
merge = 28 px, the pixel count within [``min_pixels``, ``max_pixels``], the aspect ratio kept as far as it can; an
aspect ratio above 200 is refused), normalises it (CLIP mean / std), duplicates it over the temporal patch and cuts it
into flat patches grouped in 2 × 2 merge blocks: ``pixel_values`` [t·h·w, C·T·p·p] and ``image_grid_thw`` (t, h, w).
The processor expands ``<|image_pad|>`` to t·h·w / 4 placeholders (``replace_image_token``).

transformers' ``Qwen2_5_VLProcessor`` also holds a video processor, whose class needs torchvision;
:class:`ImageOnlyQwen25VLProcessor` is the same processor without that attribute (images only — video input is
refused anyway).

Rows of one batch hold images of different grids (hence N_v): ``pixel_values`` is padded per row with zero patches
to the largest row's count and ``grid_thw`` lists each row's (t, h, w); the generators pad the visual spans
(:mod:`vtp_jax.generation.visual_spans`).
"""

from __future__ import annotations

import os

import numpy as np

from vtp_jax.processing import (
    Batch, BaseProcessor, InputError, _quiet_transformers, _render_template, _rgb_images, load_hf_files,
)

SPECIAL_MARKERS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")


def _image_only_class():
    import transformers
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyQwen25VLProcessor(transformers.Qwen2_5_VLProcessor):
        """transformers' ``Qwen2_5_VLProcessor`` with a tokenizer and an image processor only (no video processor,
        whose class needs torchvision). Same ``__call__``, placeholder expansion and chat template."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.image_token_id = (getattr(tokenizer, "image_token_id", None)
                                   or tokenizer.convert_tokens_to_ids(self.image_token))
            self.video_token_id = (getattr(tokenizer, "video_token_id", None)
                                   or tokenizer.convert_tokens_to_ids(self.video_token))
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return ImageOnlyQwen25VLProcessor


def __getattr__(name):  # ImageOnlyQwen25VLProcessor, built on first use (transformers imported lazily)
    if name == "ImageOnlyQwen25VLProcessor":
        cls = _image_only_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


class Qwen25VLProcessor(BaseProcessor):
    """Qwen2.5-VL: tokenizer (``AutoTokenizer``), ``Qwen2VLImageProcessorPil`` and :class:`ImageOnlyQwen25VLProcessor`
    from one checkpoint directory.

    Args:
      model_dir: a converted (or HF) Qwen2.5-VL directory with tokenizer files, ``preprocessor_config.json`` (patch,
        merge and temporal patch sizes, pixel bounds, CLIP mean / std) and a chat template.
      cfg: the :class:`vtp_jax.families.qwen2_5_vl.config.Qwen25VLConfig` (``image_token_id``, the tower's sizes).
      min_pixels, max_pixels: override the image processor's pixel bounds (height × width after resizing; the
        ``size = {"shortest_edge", "longest_edge"}`` of transformers 5); None: the checkpoint's.

    Raises InputError for unloadable files, bounds that are not positive, ``min_pixels > max_pixels``, a
    ``max_pixels`` below one merged unit ((patch · merge)² pixels), or an image processor whose patch / merge sizes
    disagree with config.json.
    """

    def __init__(self, model_dir: str, cfg, *, min_pixels: int | None = None, max_pixels: int | None = None):
        import transformers
        from transformers import AutoTokenizer

        v = cfg.vision
        unit = (v.patch_size * v.spatial_merge_size) ** 2
        for name, value in (("--min-pixels", min_pixels), ("--max-pixels", max_pixels)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InputError(f"{name} must be a whole number ≥ 1, got {value!r}")
        if max_pixels is not None and max_pixels < unit:
            raise InputError(f"--max-pixels {max_pixels} is below one merged unit of {unit} pixels "
                             f"((patch {v.patch_size} · merge {v.spatial_merge_size})²)")

        def load():
            with _quiet_transformers():
                tok = AutoTokenizer.from_pretrained(model_dir)
                image = transformers.Qwen2VLImageProcessorPil.from_pretrained(model_dir)
            template = None
            path = os.path.join(model_dir, "chat_template.jinja")
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    template = f.read()
            return _image_only_class()(image_processor=image, tokenizer=tok,
                                       chat_template=template or getattr(tok, "chat_template", None))

        self.hf = load_hf_files(model_dir, load)
        self.tokenizer = self.hf.tokenizer
        self.cfg = cfg
        self.image_token_id = int(cfg.image_token_id)
        image = self.hf.image_processor
        got = (image.patch_size, image.merge_size, image.temporal_patch_size)
        want = (v.patch_size, v.spatial_merge_size, v.temporal_patch_size)
        if tuple(int(g) for g in got) != want:
            raise InputError(f"the image processor's (patch, merge, temporal patch) sizes {got} disagree with "
                             f"config.json's {want}: processor files of another model?")
        lo = int(min_pixels if min_pixels is not None else image.size["shortest_edge"])
        hi = int(max_pixels if max_pixels is not None else image.size["longest_edge"])
        if lo > hi:
            raise InputError(f"min pixels {lo} exceed max pixels {hi} (--min-pixels / --max-pixels)")
        image.size = {"shortest_edge": lo, "longest_edge": hi}
        self.min_pixels, self.max_pixels = lo, hi

    def grid_for(self, image_size) -> tuple[int, int, int]:
        """The patch grid (t, h, w) of an image of (height, width) ``image_size`` (transformers' ``smart_resize``
        within this processor's pixel bounds; t = 1). Raises InputError when it cannot be resized."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        v = self.cfg.vision
        factor = v.patch_size * v.spatial_merge_size
        try:
            h, w = smart_resize(int(image_size[0]), int(image_size[1]), factor=factor, min_pixels=self.min_pixels,
                                max_pixels=self.max_pixels)
        except ValueError as e:
            raise InputError(f"an image of {image_size[1]} × {image_size[0]} pixels cannot be resized within "
                             f"{self.min_pixels}–{self.max_pixels} pixels: {e}") from None
        return 1, h // v.patch_size, w // v.patch_size

    def build_prompt(self, question: str) -> str:
        """The chat-template prompt of one user turn (one image, then the question) plus the generation prompt."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        if not getattr(self.hf, "chat_template", None):
            raise InputError("the checkpoint has no chat template (chat_template.jinja / chat_template.json)")
        return _render_template(lambda: self.hf.apply_chat_template(messages, add_generation_prompt=True,
                                                                    tokenize=False))

    def __call__(self, images, questions, *, bucket: int = 64) -> Batch:
        """One image + one question per row (any PIL mode).

        Returns a :class:`Batch`: input_ids / attention_mask int32 [B, T] left-padded to a multiple of ``bucket``,
        pixel_values float32 [B, P, C·T·p·p] (row b's t·h·w patches, zero patches after, P the largest row's count),
        image_inputs ``{"pixel_values", "grid_thw": ((t, h, w), …)}`` (one static triple per row), num_visual_tokens
        N_v (the largest row's).

        Raises InputError for a video (anything but a single image per row), an image that cannot be resized within
        the pixel bounds, a special vision token typed in a question, or placeholders that disagree with the grid.
        """
        from PIL import Image

        self._check_pairs(images, questions)
        for im in images:
            if not isinstance(im, Image.Image) or getattr(im, "n_frames", 1) > 1:
                raise InputError("video input is not supported for Qwen2.5-VL (one still image per prompt)")
        images = _rgb_images(images)
        v = self.cfg.vision
        rows, pixels, grids = [], [], []
        for image, question in zip(images, questions):
            typed = [m for m in SPECIAL_MARKERS if m in question]
            if typed:
                raise InputError(f"do not type {typed[0]} in the question (the prompt holds one image marker)")
            grid = self.grid_for((image.height, image.width))  # refuses what cannot be resized, naming the size
            try:
                enc = self.hf(images=[image], text=[self.build_prompt(question)], return_tensors="np")
            except InputError:
                raise
            except Exception as e:
                raise InputError(f"the Qwen2.5-VL processor failed: {type(e).__name__}: {e}") from None
            got = tuple(int(g) for g in np.asarray(enc["image_grid_thw"]).reshape(-1)[:3])
            ids = [int(i) for i in np.asarray(enc["input_ids"])[0]]
            n_img = sum(1 for i in ids if i == self.image_token_id)
            n_v = self.cfg.num_visual_tokens_of(got)
            if got != grid or n_img != n_v:
                raise InputError(f"the processor gave grid {got} and {n_img} image placeholders; the model expects "
                                 f"grid {grid} and {n_v} — processor files that do not match config.json?")
            px = np.asarray(enc["pixel_values"], np.float32)
            if px.shape != (got[0] * got[1] * got[2], v.patch_dim):
                raise InputError(f"the image processor returned pixel_values of shape {px.shape}, expected "
                                 f"[{got[0] * got[1] * got[2]}, {v.patch_dim}]")
            rows.append(ids)
            pixels.append(px)
            grids.append(got)
        input_ids, mask = self._pad(rows, bucket)
        p = max(px.shape[0] for px in pixels)
        pixel_values = np.stack([np.pad(px, ((0, p - px.shape[0]), (0, 0))) for px in pixels])
        n_v = max(self.cfg.num_visual_tokens_of(g) for g in grids)
        return Batch(input_ids, mask, pixel_values, rows, {"pixel_values": pixel_values, "grid_thw": tuple(grids)}, n_v)
