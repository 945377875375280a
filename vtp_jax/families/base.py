"""The model-family record: everything the front ends need to know about one VLM family, in one place.

A family is registered once (:func:`vtp_jax.families.register`) by its own module (``vtp_jax/families/<name>.py``).
Front ends (vtp-convert, vtp-generate, vtp-eval, vtp-bench, the demo, the trainers) look families up by name or by
the ``model_type`` of a Hugging Face ``config.json`` and never test a family's name themselves.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

AUTOREGRESSIVE = "autoregressive"  # prefill + KV-cache decode loop (vtp_jax.generation.autoregressive)
MASKED_DIFFUSION = "masked_diffusion"  # LLaDA's denoising loop (vtp_jax.generation.diffusion)
GENERATOR_KINDS = (AUTOREGRESSIVE, MASKED_DIFFUSION)

# Sampler flags of each generator kind and their defaults (None: the family's own rule fills them).
SAMPLER_DEFAULTS = {
    AUTOREGRESSIVE: {"max_new_tokens": 32, "top_p": 1.0},
    MASKED_DIFFUSION: {"gen_length": 32, "steps": 16, "block_length": None, "remasking": "low_confidence",
                       "cfg": 0.0, "cache": "none", "threshold": None, "pruned_cache": "compact",
                       "prompt_format": None},
}


class UnknownFamilyError(ValueError):
    """A family name or ``model_type`` no registered family has; the message lists the registered ones."""


@dataclasses.dataclass(frozen=True)
class Family:
    """One VLM family.

    Attributes:
      name: the family's name, stored as ``family`` in a converted ``vtp_jax.json`` (e.g. ``"llava"``).
      model_types: the Hugging Face ``config.json`` ``model_type`` values it converts (e.g. ``("llava",)``).
      kind: generator kind, :data:`AUTOREGRESSIVE` or :data:`MASKED_DIFFUSION`.
      stages: the pruning stages its generator runs, in stage order (see :mod:`vtp_jax.pruning.registry`).
      keep_rounding: how a keep ratio becomes a keep count: ``"round"`` (``round(N_v · R)``, FastV's code) or
        ``"floor"`` (``max(1, int(N_v · R))``, RedVTP's code).
      config_from_hf: ``config.json`` dict → the family's config dataclass (raises ``ConfigError``).
      model_class: () → the ``nnx.Module`` class (imported lazily: loading a config needs no model code).
      processor: (model_dir, cfg) → the family's :class:`vtp_jax.processing.BaseProcessor`.
      tensor_names: () → (map_name, is_ignored): Hugging Face tensor name → ``Target`` | None, and → bool (the
        converter's name map; see :mod:`vtp_jax.families.names`).
      description: one line for listings and messages.
      processor_fields: cfg → (transformers processor class name, {field: value} its ``processor_config.json``
        needs, derived from config.json); vtp-convert fills missing fields from it (older and third-party
        checkpoints ship only a ``preprocessor_config.json``). None: the family's processor needs no such file.
      prompt_formats: the prompt formats its processor takes (``processor(..., prompt_format=…)``; LLaDA-V's
        "official" / "plain"); empty: one fixed format.
      processor_options: keyword options its processor takes (``processor(..., name=value)``), each a front-end
        flag ``--name`` (Qwen2.5-VL's ``min_pixels`` / ``max_pixels``: the dynamic-resolution bounds); empty: none.
    """

    name: str
    model_types: tuple[str, ...]
    kind: str
    stages: tuple[str, ...]
    keep_rounding: str
    config_from_hf: Callable[[dict], Any]
    model_class: Callable[[], type]
    processor: Callable[[str, Any], Any]
    tensor_names: Callable[[], tuple[Callable, Callable]]
    description: str = ""
    processor_fields: Callable[[Any], tuple[str, dict]] | None = None
    prompt_formats: tuple[str, ...] = ()
    processor_options: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in GENERATOR_KINDS:
            raise ValueError(f"family {self.name!r}: kind {self.kind!r} is not one of {GENERATOR_KINDS}")
        if self.keep_rounding not in ("round", "floor"):
            raise ValueError(f"family {self.name!r}: keep_rounding {self.keep_rounding!r} is not round / floor")

    @property
    def sampler_defaults(self) -> dict[str, Any]:
        """The sampler flags of this family's generator kind and their defaults."""
        return dict(SAMPLER_DEFAULTS[self.kind])

    @property
    def autoregressive(self) -> bool:
        return self.kind == AUTOREGRESSIVE
