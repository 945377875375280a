"""Generation: one interface for both generator kinds.

* :class:`~vtp_jax.generation.autoregressive.AutoregressiveGenerator` (prefill + KV-cache decode; LLaVA) and
  :class:`~vtp_jax.generation.diffusion.DiffusionGenerator` (LLaDA's masked-diffusion loop; LLaDA-V).
* Both have ``generate(batch, settings) -> GenerationOutput`` (:mod:`vtp_jax.generation.output`): ``batch`` is a
  :class:`vtp_jax.processing.Batch` (``input_ids``, ``attention_mask``, ``image_inputs``), ``settings`` a
  :class:`SamplerSettings`. Their array-level ``generate_arrays(...)`` methods serve callers that build arrays
  themselves (tests, benchmarks).
* :func:`make_generator` builds the generator of a model's family (its ``Family.kind``).
"""

from __future__ import annotations

import dataclasses

from vtp_jax.generation.output import GenerationOutput, count_new_tokens


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """The per-call sampler settings of both generator kinds (the shape-fixing ones — ``max_new_tokens`` here,
    a diffusion generator's :class:`~vtp_jax.generation.diffusion.DiffusionConfig` — select compiled programs).

    Attributes:
      temperature: 0 = greedy (≥ 0, finite).
      seed: PRNG seed in [0, 2³² − 1].
      top_p: nucleus sampling (autoregressive; in (0, 1]).
      max_new_tokens: tokens to generate (autoregressive; ≥ 1). Diffusion lengths live in its DiffusionConfig.
      eos_token_ids: where an autoregressive answer stops (diffusion: ``DiffusionConfig.stop_ids``).
      pad_token_id: id written after an autoregressive row's stop id.
    """

    temperature: float = 0.0
    seed: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 32
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0


def make_generator(model, method=None, *, diffusion=None, mesh=None):
    """The generator of ``model``'s family kind (``families.get(model.cfg.family).kind``).

    Args:
      model: a loaded model (``model.cfg.family`` names its family).
      method: None, one pruning method, or a tuple of methods (one per stage).
      diffusion: the :class:`~vtp_jax.generation.diffusion.DiffusionConfig` (masked-diffusion kinds only).
      mesh: the ``jax.sharding.Mesh`` the model's parameters are sharded over (``checkpoint.load(..., mesh=)``), or
        None: inputs are then split along its ``data`` axis (:func:`vtp_jax.sharding.shard_batch`).

    Raises:
      ValueError: an unknown family, or ``diffusion`` missing for a masked-diffusion family (or given for an
        autoregressive one).
    """
    from vtp_jax import families

    kind = families.get(model.cfg.family).kind
    if kind == families.MASKED_DIFFUSION:
        from vtp_jax.generation.diffusion import DiffusionGenerator

        if diffusion is None:
            raise ValueError(f"family {model.cfg.family!r} samples by masked diffusion: pass diffusion=DiffusionConfig")
        return DiffusionGenerator(model, diffusion, method, mesh=mesh)
    from vtp_jax.generation.autoregressive import AutoregressiveGenerator

    if diffusion is not None:
        raise ValueError(f"family {model.cfg.family!r} is autoregressive: diffusion settings do not apply")
    return AutoregressiveGenerator(model, method, mesh=mesh)


__all__ = ["GenerationOutput", "SamplerSettings", "count_new_tokens", "make_generator"]
