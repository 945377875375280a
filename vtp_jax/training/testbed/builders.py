"""What the testbed trainer needs from each family's Hugging Face-format testbed builder.

One :class:`TestbedBuilder` per family, in :data:`TESTBEDS` (keyed by family name, the trainer's only per-family
table): how to build the family's HF config from the sizes of :data:`settings.SIZES` (the builders
:func:`vtp_jax.testbed.hf_llava.tiny_llava_config` / :func:`vtp_jax.testbed.hf_llada_v.tiny_llada_v_config`), which
HF tensors a checkpoint holds, how its ``config.json`` / ``generation_config.json`` / processor files are written,
and how its processor renders chat turns, prompt ids and pixels. Everything that depends only on the generator kind
(the loss, the response padding of masked diffusion, the generator used for evaluation) is keyed by
``Family.kind`` elsewhere.

Giving a new family a testbed means adding one subclass here and its entry in :data:`TESTBEDS`.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from vtp_jax.training.testbed.recording import write_json
from vtp_jax.training.testbed.settings import FAMILIES, SIZES, TrainError


class TestbedBuilder:
    """The HF-format side of one family's testbed (see the module docstring). Subclasses set :attr:`family` and
    :attr:`module_name` and implement the methods that raise NotImplementedError here."""

    family: str = ""
    module_name: str = ""  # the builder module (imported on first use: it pulls in transformers)
    response_pad_token: str | None = None  # masked diffusion: the token that pads a training response

    @property
    def module(self):
        """The family's builder module (``vtp_jax.testbed.hf_<family>``)."""
        import importlib

        return importlib.import_module(self.module_name)

    # ---- config and tensors ------------------------------------------------------------------------------------
    @property
    def config_builder(self) -> Callable[..., Any]:
        """The builder's config function; its keyword arguments are the ``--sizes`` keys of this family."""
        raise NotImplementedError

    def make_config(self, **sizes):
        """The HF config of a testbed of these sizes (the builder's own type: a transformers config or a dict)."""
        return self.config_builder(**sizes)

    def config_dict(self, hf_config) -> dict:
        """The config as the JSON dict :func:`vtp_jax.config.config_from_hf` reads."""
        raise NotImplementedError

    def tensor_specs(self, hf_config) -> list[tuple[str, tuple]]:
        """(HF tensor name, HF shape) of every tensor a checkpoint of ``hf_config`` holds."""
        raise NotImplementedError

    # ---- files -------------------------------------------------------------------------------------------------
    def base_tokenizer(self, vocab_size: int):
        """The builder's tokenizer (``train_tokenizer(vocab_size)`` on its built-in corpus)."""
        return self.module.train_tokenizer(vocab_size)

    def builtin_corpus(self):
        """The builder's built-in tokenizer corpus (an iterator of lines)."""
        from vtp_jax.testbed import hf_llava

        return hf_llava._corpus()  # both builders train on this corpus

    def write_processor_files(self, out_dir: str, hf_config, tokenizer) -> None:
        """config.json + tokenizer + processor files (no weights): enough for ``load_processor``."""
        raise NotImplementedError

    def write_checkpoint_config(self, out_dir: str, hf_config, tokenizer, record: dict, dtype: str) -> None:
        """config.json (``vtp_random_weights: false``, ``vtp_testbed: record``, ``dtype``), generation_config.json,
        tokenizer and processor files of an exported checkpoint."""
        raise NotImplementedError

    # ---- processor side ----------------------------------------------------------------------------------------
    def user_content(self, question: str, first: bool):
        """The ``content`` of a user message of the chat template (the first one carries the image)."""
        raise NotImplementedError

    def template_owner(self, processor):
        """The object whose ``apply_chat_template`` renders this family's conversations."""
        raise NotImplementedError

    def visual_layout(self, processor, cfg, size: int):
        """(number of visual tokens of a ``size`` px square image, the image layout or None)."""
        raise NotImplementedError

    def prompt_ids(self, processor, question: str, dummy_image, num_visual_tokens: int) -> list[int]:
        """The first turn's prompt ids exactly as inference builds them (image placeholders expanded)."""
        raise NotImplementedError

    def pixels(self, processor, images, size: int, layout) -> np.ndarray:
        """The processor's pixel values of ``size`` px square training images (float32)."""
        raise NotImplementedError

    def image_kwargs(self, layout, size: int) -> dict:
        """The static image arguments the model's forward / ``image_features`` take with :meth:`pixels`."""
        return {}


class LlavaTestbed(TestbedBuilder):
    """LLaVA-1.5 testbed (:mod:`vtp_jax.testbed.hf_llava`): a ``transformers.LlavaConfig``, the transformers
    tensor names, a ``LlavaProcessor`` (CLIP image processor, chat template with an image content part)."""

    family = "llava"
    module_name = "vtp_jax.testbed.hf_llava"

    @property
    def config_builder(self):
        return self.module.tiny_llava_config

    def config_dict(self, hf_config) -> dict:
        return hf_config.to_dict()

    def tensor_specs(self, hf_config) -> list[tuple[str, tuple]]:
        return [(name, tuple(shape)) for name, shape, _ in self.module._param_specs(hf_config, "transformers")]

    def write_processor_files(self, out_dir: str, hf_config, tokenizer) -> None:
        os.makedirs(out_dir, exist_ok=True)
        hf_config.save_pretrained(out_dir)
        self.module.save_processor(out_dir, tokenizer, hf_config)

    def write_checkpoint_config(self, out_dir: str, hf_config, tokenizer, record: dict, dtype: str) -> None:
        import transformers

        config = hf_config.__class__.from_dict(hf_config.to_dict())
        config.dtype = dtype
        config.architectures = ["LlavaForConditionalGeneration"]
        config.vtp_random_weights = False
        config.vtp_testbed = record
        config.save_pretrained(out_dir)
        transformers.GenerationConfig.from_model_config(config).save_pretrained(out_dir)
        self.module.save_processor(out_dir, tokenizer, config)

    def user_content(self, question: str, first: bool):
        content = [{"type": "text", "text": question}]
        return [{"type": "image"}] + content if first else content

    def template_owner(self, processor):
        return processor.hf

    def visual_layout(self, processor, cfg, size: int):
        return int(cfg.num_visual_tokens), None

    def prompt_ids(self, processor, question: str, dummy_image, num_visual_tokens: int) -> list[int]:
        return [int(i) for i in processor([dummy_image], [question]).prompt_ids[0]]

    def pixels(self, processor, images, size: int, layout) -> np.ndarray:
        """[B, 3, S, S]."""
        return np.asarray(processor.hf.image_processor(images=list(images), return_tensors="np")["pixel_values"],
                          np.float32)


class LladaVTestbed(TestbedBuilder):
    """LLaDA-V testbed (:mod:`vtp_jax.testbed.hf_llada_v`): a config.json dict, LLaDA-V tensor names, a tokenizer
    with LLaDA's chat template plus a LLaVA-OneVision image processor (anyres tiles), ``<image>`` as text."""

    family = "llada_v"
    module_name = "vtp_jax.testbed.hf_llada_v"
    response_pad_token = "<|eot_id|>"

    @property
    def config_builder(self):
        return self.module.tiny_llada_v_config

    def config_dict(self, hf_config) -> dict:
        return dict(hf_config)

    def tensor_specs(self, hf_config) -> list[tuple[str, tuple]]:
        return [(name, tuple(shape)) for name, shape, _ in self.module.param_specs(hf_config, "llada_v")]

    def write_processor_files(self, out_dir: str, hf_config, tokenizer) -> None:
        os.makedirs(out_dir, exist_ok=True)
        write_json(os.path.join(out_dir, "config.json"), hf_config)
        self.module.save_processor(out_dir, tokenizer, hf_config)

    def write_checkpoint_config(self, out_dir: str, hf_config, tokenizer, record: dict, dtype: str) -> None:
        module = self.module
        config = {**hf_config, "torch_dtype": dtype, "vtp_random_weights": False, "vtp_testbed": record}
        write_json(os.path.join(out_dir, "config.json"), config)
        write_json(os.path.join(out_dir, "generation_config.json"),
                   {"bos_token_id": module.BOS_ID, "eos_token_id": module.EOS_ID, "pad_token_id": module.EOS_ID})
        module.save_processor(out_dir, tokenizer, config)

    def user_content(self, question: str, first: bool):
        from vtp_jax.processing import IMAGE_TOKEN

        return f"{IMAGE_TOKEN}\n{question}" if first else question

    def template_owner(self, processor):
        return processor.tokenizer

    def visual_layout(self, processor, cfg, size: int):
        layout = processor.layout((size, size))
        return int(layout.num_tokens), layout

    def prompt_ids(self, processor, question: str, dummy_image, num_visual_tokens: int) -> list[int]:
        return [int(i) for i in processor.encode_prompt(processor.build_prompt(question), num_visual_tokens)]

    def pixels(self, processor, images, size: int, layout) -> np.ndarray:
        """[B, tiles, 3, S, S] (base tile + the 1 × 1 grid for the square training images)."""
        enc = processor.image_processor(images=list(images), return_tensors="np")
        sizes = {tuple(int(v) for v in s) for s in np.asarray(enc["image_sizes"])}
        if sizes != {(size, size)}:
            raise TrainError(f"training images must be {size} px squares, got sizes {sizes}")
        return np.asarray(enc["pixel_values"], np.float32)[:, : layout.num_tiles]

    def image_kwargs(self, layout, size: int) -> dict:
        """``grid`` (the anyres tile grid) and ``image_size`` (the training images' (H, W) in px)."""
        return {"grid": tuple(layout.grid), "image_size": (size, size)}


TESTBEDS: dict[str, TestbedBuilder] = {b.family: b for b in (LlavaTestbed(), LladaVTestbed())}
assert tuple(TESTBEDS) == FAMILIES and set(TESTBEDS) == set(SIZES)


def testbed_builder(family: str) -> TestbedBuilder:
    """The :class:`TestbedBuilder` of ``family``. Raises TrainError for a family without a testbed."""
    if family not in TESTBEDS:
        raise TrainError(f"unknown family {family!r} (one of {', '.join(FAMILIES)})")
    return TESTBEDS[family]


def make_hf_config(family: str, sizes: dict | None = None):
    """The HF config of the testbed model: :data:`SIZES` of ``family`` overridden by ``sizes``, through the
    family's config builder (a ``transformers.LlavaConfig`` for llava, a config.json dict for llada_v)."""
    return testbed_builder(family).make_config(**{**SIZES[family], **(sizes or {})})


def hf_config_dict(family: str, hf_config) -> dict:
    """The config as the JSON dict ``vtp_jax.config.config_from_hf`` reads."""
    return testbed_builder(family).config_dict(hf_config)


def write_processor_files(out_dir: str, family: str, hf_config, tokenizer) -> None:
    """config.json + tokenizer + processor files (no weights): enough for ``load_processor``."""
    testbed_builder(family).write_processor_files(out_dir, hf_config, tokenizer)
