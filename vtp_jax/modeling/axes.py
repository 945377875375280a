"""Logical axis names of every parameter, and their mapping to mesh axes (sharding-ready parameters).

Each parameter created by the factories of :mod:`vtp_jax.modeling.layers` carries one logical name per dimension
(``("embed", "mlp")`` for an MLP up projection's [in, out] kernel), stored as Flax NNX's own sharding metadata:
``nnx.Param(value, out_sharding=names, eager_sharding=False)``. Nothing reads the names until a caller asks:

* without a mesh nothing changes — same values, shapes, dtypes, the same traced program and the same checkpoints
  (``nnx.to_pure_dict`` drops metadata; ``nnx.replace_by_pure_dict`` keeps it);
* ``eager_sharding=False`` keeps Flax from sharding a parameter when it is created (with Flax's default, creating an
  annotated parameter outside a mesh context raises, and inside one needs every logical name to be a mesh axis);
* :func:`logical_axes` reads the names back, :func:`logical_partition_specs` turns them into ``PartitionSpec`` s
  through a rules dict (pure functions, no mesh needed); Flax's own readers work too —
  ``nnx.get_partition_spec(state)`` gives the logical names as specs, and under
  ``nnx.logical_axis_rules(pairs)`` ``nnx.get_named_sharding(state, mesh)`` / ``nnx.get_abstract_model`` map them.

Parameter names by kind (the [in, out] kernels of Flax's ``Linear``; q/k/v/o projections keep the heads flattened
into one axis, [hidden, num_heads · head_dim]):

==================================  =====================================================================
text embedding table                (vocab, embed)
q_proj / k_proj / v_proj kernel     (embed, heads) / (embed, kv_heads) / (embed, kv_heads); biases (heads,) …
o_proj kernel                       (heads, embed); bias (embed,)
MLP gate_proj / up_proj, down_proj  (embed, mlp), (mlp, embed); biases (mlp,), (embed,)
RMSNorm weight, image_newline       (embed,)
lm_head kernel                      (embed, vocab)
vision patch conv kernel, bias      (patch_height, patch_width, channels, vision_embed), (vision_embed,)
vision class / position embedding   (vision_embed,), (positions, vision_embed)
vision attention                    (vision_embed, vision_heads), o_proj (vision_heads, vision_embed)
vision MLP fc1, fc2                 (vision_embed, vision_mlp), (vision_mlp, vision_embed)
vision LayerNorm scale, bias        (vision_embed,)
projector linear_1, linear_2        (vision_embed, mlp), (mlp, embed)
==================================  =====================================================================

``heads`` / ``kv_heads`` name a flattened ``num_heads · head_dim`` axis: a mesh axis of size n splits it into
whole heads when n divides the number of heads. The vision tower has names of its own so that rules can shard the
language model and leave the (small) tower replicated. :data:`BATCH`, :data:`SEQUENCE` and :data:`HEAD_DIM` name
activation and KV-cache axes ([B, S, kv_heads, head_dim]); no parameter uses them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Union

import math

import jax
from flax import nnx
from jax.sharding import AxisType, PartitionSpec

# ---- language model -------------------------------------------------------------------------------------------
EMBED = "embed"  # hidden size of the language model
VOCAB = "vocab"  # vocabulary (embedding rows, LM-head columns)
HEADS = "heads"  # query heads × head_dim, flattened (q_proj out, o_proj in)
KV_HEADS = "kv_heads"  # key/value heads × head_dim, flattened (k_proj / v_proj out)
MLP = "mlp"  # intermediate size of the SwiGLU MLP; hidden size of the projector
# ---- vision tower ---------------------------------------------------------------------------------------------
VISION_EMBED = "vision_embed"  # hidden size of the ViT
VISION_HEADS = "vision_heads"  # ViT heads × head_dim, flattened
VISION_MLP = "vision_mlp"  # intermediate size of the ViT MLP
PATCH_HEIGHT = "patch_height"  # patch-embedding conv kernel rows
PATCH_WIDTH = "patch_width"  # patch-embedding conv kernel columns
CHANNELS = "channels"  # image channels (patch-embedding conv input)
POSITIONS = "positions"  # rows of the ViT's learned position embedding
# ---- activations and caches (no parameter uses these) ---------------------------------------------------------
BATCH = "batch"
SEQUENCE = "sequence"
HEAD_DIM = "head_dim"

PARAMETER_AXES = (EMBED, VOCAB, HEADS, KV_HEADS, MLP, VISION_EMBED, VISION_HEADS, VISION_MLP, PATCH_HEIGHT,
                  PATCH_WIDTH, CHANNELS, POSITIONS)

# One logical name (or None: never sharded) per dimension of a parameter.
Axes = tuple[Union[str, None], ...]
# Logical name → mesh axis, tuple of mesh axes, or None (replicated).
Rules = Mapping[str, Union[str, tuple[str, ...], None]]

# The one set of rules (used by :mod:`vtp_jax.sharding` for parameters and by :func:`constrain` for activations):
# FSDP along embed, tensor parallelism along heads / MLP / vocab, data parallelism along batch. Names without a
# rule (the sequence, head_dim, the vision tower's) are never split.
RULES: dict[str, Any] = {EMBED: "fsdp", HEADS: "tensor", KV_HEADS: "tensor", MLP: "tensor",
                         VOCAB: "tensor", BATCH: "data"}
# Keys / values of a KV cache [B, S, kv_heads, head_dim] (LayerCache.k / .v); its valid mask is [B, S].
KV_CACHE_AXES = (BATCH, SEQUENCE, KV_HEADS, HEAD_DIM)


def param_metadata(names: Axes | None) -> dict:
    """The ``nnx.Param`` metadata that records logical axis ``names`` (the one place it is made).

    Returns ``{"out_sharding": names, "eager_sharding": False}`` — for ``nnx.Param(value, **metadata)`` or the
    ``kernel_metadata=`` / ``bias_metadata=`` / ``embedding_metadata=`` / ``scale_metadata=`` arguments of Flax's
    layers — or ``{}`` for ``names=None`` (a parameter without names, exactly as before). Raises TypeError for a
    name that is not a string or None.
    """
    if names is None:
        return {}
    names = tuple(names)
    bad = [n for n in names if n is not None and not isinstance(n, str)]
    if bad:
        raise TypeError(f"logical axis names must be strings or None, got {bad!r} in {names!r}")
    return {"out_sharding": names, "eager_sharding": False}


def check_rank(names: Axes | None, shape: tuple[int, ...], what: str) -> None:
    """Raises ValueError unless ``names`` is None or holds one name per dimension of ``shape``."""
    if names is not None and len(tuple(names)) != len(shape):
        raise ValueError(f"{what}: {len(tuple(names))} logical axis names {tuple(names)!r} for a parameter of "
                         f"rank {len(shape)} (shape {tuple(shape)})")


def param(value, names: Axes | None) -> nnx.Param:
    """``nnx.Param(value)`` with logical axis ``names`` (one per dimension of ``value``; None: no names).

    Raises ValueError when the number of names differs from ``value.ndim``.
    """
    check_rank(names, tuple(value.shape), "param")
    return nnx.Param(value, **param_metadata(names))


def _param_state(model_or_state) -> nnx.State:
    if isinstance(model_or_state, nnx.Module):
        return nnx.state(model_or_state, nnx.Param)
    if isinstance(model_or_state, nnx.State):
        return nnx.filter_state(model_or_state, nnx.Param)
    raise TypeError(
        f"expected an nnx.Module or nnx.State (pure dicts carry no axis names), got {type(model_or_state).__name__}"
    )


def _flat_params(model_or_state) -> list[tuple[tuple, nnx.Variable]]:
    return list(nnx.to_flat_state(_param_state(model_or_state)))


def _path_name(path: tuple) -> str:
    return ".".join(str(k) for k in path)


def _names_of(path: tuple, var: nnx.Variable) -> Axes | None:
    names = var.get_metadata().get("out_sharding")
    if names is None:
        return None
    names = tuple(names)
    shape = tuple(getattr(var.get_value(), "shape", ()))
    if len(names) != len(shape):
        raise ValueError(f"{_path_name(path)}: logical axis names {names!r} for a parameter of shape {shape}")
    return names


def logical_axes(model_or_state) -> dict[str, Axes | None]:
    """{parameter path: logical axis names} of every ``nnx.Param`` of a model or state.

    Args:
      model_or_state: an ``nnx.Module`` or an ``nnx.State`` (concrete or abstract, e.g. from ``nnx.eval_shape``);
        non-Param variables are ignored.

    Returns:
      Paths joined with dots as in :func:`vtp_jax.checkpoint.flatten` (``"language_model.layers.0.mlp.up_proj.
      kernel"``) → a tuple with one name (or None) per dimension, or None for a parameter created without names.

    Raises:
      TypeError: for anything but a Module or State (a pure dict has no metadata).
      ValueError: a parameter whose number of names differs from its rank (a modeling bug).
    """
    return {_path_name(path): _names_of(path, var) for path, var in _flat_params(model_or_state)}


def _normalise_rules(rules: Rules | Iterable[tuple[str, Any]]) -> dict[str, tuple[str, ...] | None]:
    items = rules.items() if isinstance(rules, Mapping) else list(rules)
    out: dict[str, tuple[str, ...] | None] = {}
    for logical, target in items:
        if logical in out:  # pairs: the first rule for a name wins (Flax's order)
            continue
        if target is None:
            out[logical] = None
        elif isinstance(target, str):
            out[logical] = (target,)
        elif isinstance(target, (tuple, list)) and all(isinstance(t, str) for t in target):
            out[logical] = tuple(target) or None
        else:
            raise TypeError(f"rule {logical!r} → {target!r}: a mesh axis must be a string, a tuple of strings "
                            "or None")
    return out


def partition_spec(names: Axes | None, rules: Rules | Iterable[tuple[str, Any]]) -> PartitionSpec:
    """The ``PartitionSpec`` of one parameter: each logical name mapped to its mesh axis (or axes) by ``rules``.

    A name without a rule, a None name, or ``names=None`` is replicated (None entry; ``PartitionSpec()`` for
    ``names=None``). A mesh axis shards at most one dimension: a later dimension whose mesh axis is already used
    is replicated instead. The spec has one entry per name. Raises TypeError for a malformed rule.
    """
    table = _normalise_rules(rules)
    if names is None:
        return PartitionSpec()
    used: set[str] = set()
    entries = []
    for name in names:
        target = table.get(name) if name is not None else None
        if target is None or used.intersection(target):
            entries.append(None)
            continue
        used.update(target)
        entries.append(target[0] if len(target) == 1 else target)
    return PartitionSpec(*entries)


def logical_partition_specs(model_or_state, rules: Rules | Iterable[tuple[str, Any]], *, strict: bool = False
                            ) -> dict:
    """The ``PartitionSpec`` of every parameter of a model or state under logical-axis ``rules`` (no mesh needed).

    Args:
      model_or_state: an ``nnx.Module`` or ``nnx.State`` (see :func:`logical_axes`).
      rules: logical name → mesh axis name, tuple of mesh axis names, or None (replicated), as a dict or as
        (name, axis) pairs (the first pair for a name wins), e.g. ``{"embed": "fsdp", "heads": "tensor",
        "mlp": "tensor", "vocab": "tensor", "batch": "data"}``. Names without a rule are replicated.
      strict: raise instead of replicating a parameter that has no axis names.

    Returns:
      A nested dict with the structure of ``nnx.to_pure_dict(nnx.state(model, nnx.Param))`` (the restore target
      of :func:`vtp_jax.checkpoint.load`), leaves ``PartitionSpec`` with one entry per dimension (see
      :func:`partition_spec`); ``jax.tree.map(lambda p: NamedSharding(mesh, p), specs)`` gives the shardings.

    Raises:
      TypeError: a malformed rule, or ``model_or_state`` neither Module nor State.
      ValueError: with ``strict``, parameters without names (their paths listed); a parameter whose number of
        names differs from its rank.
    """
    table = _normalise_rules(rules)
    flat = _flat_params(model_or_state)
    if strict:
        missing = [_path_name(p) for p, v in flat if _names_of(p, v) is None]
        if missing:
            raise ValueError(f"{len(missing)} parameters have no logical axis names: {missing[:8]}")
    out: dict = {}
    for path, var in flat:
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = partition_spec(_names_of(path, var), table)
    return out


def constrain(x: jax.Array, names: Axes, rules: Rules = RULES) -> jax.Array:
    """``x`` with a sharding constraint from logical ``names`` (one per leading dimension; dimensions after them
    are left to the partitioner) under the mesh of the enclosing ``jax.set_mesh`` context — the generators set it
    when given a mesh; ``x`` unchanged without one (or under a mesh with Explicit axes, whose arrays carry their
    shardings in their types). A name without a rule keeps its dimension whole on every device (``sequence``: the
    pruning selections — top-k, the greedy diversity loops, the compaction gathers — always see every token of a
    row); a mesh axis that does not divide its dimension is left to the partitioner.

    Used inside jitted functions (``jax.lax.with_sharding_constraint``): it changes where numbers live, never
    their values."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or any(t != AxisType.Auto for t in mesh.axis_types):
        return x
    sizes = dict(mesh.shape)
    spec = []
    for entry, dim in zip(partition_spec(names, rules), x.shape):  # the rules' lookup, as for parameters
        axes = tuple(a for a in ((entry,) if isinstance(entry, str) else entry or ()) if a in sizes)
        if not axes:
            spec.append(None)
        elif dim % math.prod(sizes[a] for a in axes):
            spec.append(PartitionSpec.UNCONSTRAINED)
        else:
            spec.append(axes[0] if len(axes) == 1 else axes)
    spec += [PartitionSpec.UNCONSTRAINED] * (x.ndim - len(spec))
    return jax.lax.with_sharding_constraint(x, PartitionSpec(*spec))
