"""DyRate — a pruning rate that rises during autoregressive decoding (arXiv 2501.14204, "Dynamic Token Reduction
during Generation for Vision Language Models"; no public code; the paper's method description).

The paper's observation: the attention the generated tokens pay to the visual tokens falls as generation proceeds,
so the pruning rate can rise. At each generated token a lightweight predictor reads the attention distribution and
picks a pruning rate from K discrete rates; the least-attended visual tokens are dropped from the KV cache.

What the paper leaves open, and what this port does (each choice is tested):

* **Features** (:func:`group_shares`): at the probe layer ℓ (``layer``, 0-based; default ⌊L/2⌋), the softmax
  attention of the query that generates the token, per head, summed over four groups of cache slots — system
  (valid prompt tokens before the image), image (the visual tokens still in the cache), instruction (valid prompt
  tokens after the image) and response (generated tokens) — shares that sum to 1 per head. Flattened to
  ``[H · 4]`` (head-major).
* **Predictor** (:class:`RatePredictor`): linear, ``logits = f · W + b`` with W float32 [H · 4, K], b [K]; the rate
  index is the argmax (at inference; training uses Gumbel-softmax, :mod:`vtp_jax.training.dyrate`). Rates
  ``r_k = k / K`` for k = 0 … K − 1 (the paper's (k − 1)/K with 1-based k): K = 5 → 0, 20, 40, 60, 80 %.
* **Monotone rate** (:func:`choose_rate`): the rate index never falls (``max`` with the previous one) — dropped
  tokens are gone from the cache, and the paper's rate "rises over the generation".
* **Which tokens** (:func:`drop_visual`): the visual tokens still kept are ranked by the head-averaged attention of
  the same query at layer ℓ (FastV-style ranking); the top ``N_v − ⌊r · N_v⌋`` stay, the rest are dropped.
* **When**: the prefill's last prompt row decides the rate for the first decode step; every decode step's query
  decides it for the next step. The token produced by prefill always saw every visual token.
* **Where**: dropped tokens leave the KV cache of every decoder layer.

Static shapes: the KV cache keeps its static size; a dropped visual token's slot is marked invalid (its key gets
probability exactly 0 in every later step, in every layer). The rate index and the kept set are loop-carried
arrays of the jitted decode loop, so a rate change never recompiles (tested). The alternative — fixed rate buckets,
each a smaller compiled cache, with a host round trip whenever the rate crosses a bucket — was not built: on the
testbed the decode step is dominated by the weight mat-vecs (see eval/bench.py), so a shorter cache would save
little wall time, while each bucket costs one compilation and a cache gather. The KV cut is therefore reported as
visual KV entries attended per generated token (``GenerationOutput.kept_per_token``), not as wall time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from vtp_jax.pruning.stages import DecodePruning
from vtp_jax.pruning.core import PruningError
from vtp_jax.pruning.registry import register
from vtp_jax.pruning.todre_relevance import span_masks

GROUPS = ("system", "image", "instruction", "response")
SYSTEM, IMAGE, INSTRUCTION, RESPONSE = range(4)
PREDICTOR_FILE = "dyrate_predictor.safetensors"


def slot_groups(key_valid: jax.Array, visual_mask: jax.Array, extra: int) -> jax.Array:
    """Group id of every KV-cache slot, int32 [B, T + extra]: 0 system, 1 image, 2 instruction, 3 response (the
    ``extra`` decode slots), −1 padding.

    key_valid, visual_mask: bool [B, T] of the prompt the decoder saw (after any pre-LLM compaction). The prompt
    groups are ToDRE stage 2's S / V / T spans (:func:`vtp_jax.pruning.todre_relevance.span_masks`).
    """
    system, image, instruction = span_masks(key_valid, visual_mask)
    prompt = jnp.where(image, IMAGE, jnp.where(system, SYSTEM, jnp.where(instruction, INSTRUCTION, -1)))
    response = jnp.full((prompt.shape[0], extra), RESPONSE, prompt.dtype)
    return jnp.concatenate([prompt, response], axis=1).astype(jnp.int32)


def group_shares(probs: jax.Array, groups: jax.Array) -> jax.Array:
    """Per-head attention share of each group: probs float32 [B, H, S] (one query row; invalid slots 0), groups
    int32 [B, S] (:func:`slot_groups`; −1 counts nowhere) → float32 [B, H, 4] (rows sum to 1 where the head's
    probabilities do)."""
    onehot = (groups[..., None] == jnp.arange(len(GROUPS))[None, None]).astype(jnp.float32)  # [B, S, 4]
    return jnp.einsum("bhs,bsg->bhg", probs.astype(jnp.float32), onehot)


def features(probs: jax.Array, groups: jax.Array) -> jax.Array:
    """The predictor's input: :func:`group_shares` flattened head-major, float32 [B, H · 4]."""
    g = group_shares(probs, groups)
    return g.reshape(g.shape[0], -1)


def rates(num_rates: int) -> np.ndarray:
    """The K pruning rates r_k = k / K, k = 0 … K − 1 (float64 [K])."""
    return np.arange(num_rates) / num_rates


def keep_counts(num_visual: int, num_rates: int) -> np.ndarray:
    """Visual tokens kept at each rate: ``N_v − ⌊r_k · N_v⌋`` (int32 [K]), computed in integers."""
    return np.asarray([num_visual - (k * num_visual) // num_rates for k in range(num_rates)], np.int32)


def restrict_cache_valid(valid: jax.Array, slots: jax.Array, kept: jax.Array) -> jax.Array:
    """valid bool [B, S] with the visual slots int32 [B, N_v] whose ``kept`` bool [B, N_v] is False made invalid."""
    valid = jnp.asarray(valid)
    rows = jnp.arange(valid.shape[0])[:, None]
    return valid.at[rows, slots].set(valid[rows, slots] & kept)


def choose_rate(logits: jax.Array, previous: jax.Array, monotone: bool = True) -> jax.Array:
    """Rate index int32 [B]: argmax of the predictor's logits float32 [B, K], never below ``previous`` int32 [B]
    when ``monotone``."""
    k = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jnp.maximum(k, previous) if monotone else k


def drop_visual(scores: jax.Array, kept: jax.Array, target: jax.Array) -> jax.Array:
    """Keeps the ``target`` best-scored of the still-kept visual tokens.

    scores float32 [B, N_v] (attention received), kept bool [B, N_v], target int32 [B] (≤ the kept count; a larger
    target keeps every kept token). Returns bool [B, N_v] ⊆ ``kept``. Ties go to the lower index.
    """
    s = jnp.where(kept, scores.astype(jnp.float32), -jnp.inf)
    order = jnp.argsort(-s, axis=1, stable=True)
    rank = jnp.argsort(order, axis=1)
    return kept & (rank < target[:, None])


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DyRateState:
    """DyRate's loop state, carried from the prefill through the jitted decode loop (a pytree; every field an
    array, so a rate change never recompiles).

    Fields: groups int32 [B, S] (:func:`slot_groups` of the S cache slots), slots int32 [B, N_v] (cache slot of each
    visual token), kept bool [B, N_v] (visual tokens still in the cache; a row's padding slots start False in a batch
    of different visual-token counts), rate int32 [B] (current rate index), counts int32 [B, K] (each row's
    :func:`keep_counts`)."""

    groups: jax.Array
    slots: jax.Array
    kept: jax.Array
    rate: jax.Array
    counts: jax.Array

    def replace(self, **changes) -> "DyRateState":
        """A copy with the named fields replaced."""
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class RatePredictor:
    """The trained linear predictor. weight float32 [H · 4, K], bias float32 [K]; ``layer`` the probe layer it was
    trained on (0-based); ``meta`` free-form training record (JSON-able)."""

    weight: np.ndarray
    bias: np.ndarray
    layer: int
    meta: dict = dataclasses.field(default_factory=dict, compare=False)

    @property
    def num_rates(self) -> int:
        return int(self.bias.shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.weight.shape[0]) // len(GROUPS)

    def logits(self, feats: jax.Array) -> jax.Array:
        """feats float32 [B, H · 4] → logits float32 [B, K]."""
        return feats @ jnp.asarray(self.weight) + jnp.asarray(self.bias)

    def save(self, path: str) -> None:
        """Writes ``path`` (safetensors: ``weight``, ``bias`` float32; metadata ``format`` = :data:`PREDICTOR_FORMAT`,
        ``layer`` and ``meta`` as JSON), through a temporary file renamed into place.

        Raises:
          PruningError: what :meth:`load` would refuse (weight / bias shapes, NaN or inf values, a negative or
            non-integer layer, a meta that is not a JSON-able dict); nothing is written then.
        """
        from safetensors.numpy import save_file

        weight = np.asarray(self.weight, np.float32)
        bias = np.asarray(self.bias, np.float32)
        where = f"refusing to write DyRate predictor {path!r}"
        _check_tensors(where, weight, bias)
        if isinstance(self.layer, bool) or not isinstance(self.layer, (int, np.integer)) or self.layer < 0:
            raise PruningError(f"{where}: layer must be an integer ≥ 0, got {self.layer!r}")
        if not isinstance(self.meta, dict):
            raise PruningError(f"{where}: meta must be a dict, got {type(self.meta).__name__}")
        try:
            meta = json.dumps(self.meta)
        except (TypeError, ValueError) as e:
            raise PruningError(f"{where}: meta is not JSON-serialisable ({e})") from None
        tmp = path + ".tmp"
        try:
            save_file({"weight": weight, "bias": bias}, tmp,
                      metadata={"layer": str(int(self.layer)), "meta": meta, "format": PREDICTOR_FORMAT})
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    @staticmethod
    def load(path: str) -> "RatePredictor":
        """Reads a file written by :meth:`save`.

        Raises:
          PruningError, naming the file and the field or tensor: no such file (or a directory); not a safetensors
            file (empty, truncated, random bytes: "is not a vtp-train-dyrate file"); metadata ``format`` missing or
            not :data:`PREDICTOR_FORMAT`; ``layer`` missing or not an integer ≥ 0; ``meta`` not a JSON object;
            tensor ``weight`` / ``bias`` missing, not floating point, of the wrong rank, of shapes that do not fit
            [H·4, K] / [K] (K ≥ 1, H ≥ 1), or holding NaN / inf values.
        """
        from safetensors import safe_open

        if os.path.isdir(path):
            raise PruningError(f"DyRate predictor {path!r} is a directory, not a predictor file")
        if not os.path.isfile(path):
            raise PruningError(f"DyRate predictor {path!r} not found (train one with vtp-train-dyrate)")
        where = f"DyRate predictor {path!r}"
        try:
            with safe_open(path, "np") as fh:
                meta = fh.metadata() or {}
                names = set(fh.keys())
                missing = [n for n in ("weight", "bias") if n not in names]
                if missing:
                    raise PruningError(f"{where}: tensor {' and '.join(map(repr, missing))} missing "
                                       f"(the file holds {sorted(names) or 'no tensors'})")
                tensors = {}
                for name in ("weight", "bias"):
                    try:
                        tensors[name] = fh.get_tensor(name)
                    except Exception as e:  # noqa: BLE001 — an unreadable tensor (dtype numpy lacks, bad offsets)
                        raise PruningError(f"{where}: tensor {name!r} cannot be read ({e})") from None
        except PruningError:
            raise
        except OSError as e:
            raise PruningError(f"{where}: cannot read ({e.strerror or e})") from None
        except Exception as e:  # noqa: BLE001 — any parse failure is a bad file
            raise PruningError(f"{where} is not a vtp-train-dyrate file: {e}") from None
        fmt = meta.get("format")
        if fmt != PREDICTOR_FORMAT:
            raise PruningError(f"{where}: metadata field 'format' must be {PREDICTOR_FORMAT!r}, got {fmt!r} "
                               "(not a vtp-train-dyrate file)")
        layer = meta.get("layer")
        if layer is None or not re.fullmatch(r"\s*\+?[0-9]+\s*", layer):
            raise PruningError(f"{where}: metadata field 'layer' must be an integer ≥ 0, got {layer!r}")
        try:
            record = json.loads(meta.get("meta", "{}"))
        except json.JSONDecodeError as e:
            raise PruningError(f"{where}: metadata field 'meta' is not valid JSON ({e})") from None
        if not isinstance(record, dict):
            raise PruningError(f"{where}: metadata field 'meta' must be a JSON object, got {type(record).__name__}")
        for name, t in tensors.items():
            if np.dtype(t.dtype).name not in _FLOAT_DTYPES:
                raise PruningError(f"{where}: tensor {name!r} has dtype {np.dtype(t.dtype).name}, expected a floating "
                                   f"point dtype ({', '.join(_FLOAT_DTYPES)})")
        weight, bias = (tensors[n].astype(np.float32) for n in ("weight", "bias"))
        _check_tensors(where, weight, bias)
        return RatePredictor(weight, bias, int(layer), record)


PREDICTOR_FORMAT = "vtp_jax.dyrate.v1"
_FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")


def _check_tensors(where: str, weight: np.ndarray, bias: np.ndarray) -> None:
    """Raises PruningError (prefixed ``where``) unless weight [H·4, K] and bias [K] fit, with H, K ≥ 1, and every
    value is finite (the tensor and the number of NaN / inf values are named)."""
    if weight.ndim != 2 or bias.ndim != 1 or weight.shape[1] != bias.shape[0] or weight.shape[0] % len(GROUPS):
        raise PruningError(f"{where}: weight {weight.shape} / bias {bias.shape} do not fit "
                           f"[H·{len(GROUPS)}, K] / [K]")
    if weight.shape[0] == 0 or bias.shape[0] == 0:
        raise PruningError(f"{where}: weight {weight.shape} / bias {bias.shape} are empty (need H ≥ 1 heads, K ≥ 1 "
                           "rates)")
    for name, t in (("weight", weight), ("bias", bias)):
        bad = ~np.isfinite(t)
        if bad.any():
            nan, inf = int(np.isnan(t).sum()), int(np.isinf(t).sum())
            raise PruningError(f"{where}: tensor {name!r} has non-finite values ({nan} NaN, {inf} inf of {t.size}); "
                               "re-train it with vtp-train-dyrate")


@register
@dataclasses.dataclass(frozen=True)
class DyRate(DecodePruning):
    """DyRate (see the module docstring). predictor: path of a :class:`RatePredictor` file (``vtp-train-dyrate``);
    None = ``dyrate_predictor.safetensors`` next to the checkpoint (resolved by the front ends). layer: probe layer
    override (0-based; default: the predictor's). monotone: the rate never falls (default True)."""

    predictor: str | None = None
    layer: int | None = None
    monotone: bool = True

    name = "dyrate"

    def load_predictor(self) -> RatePredictor:
        """The predictor file's contents. Raises PruningError."""
        if self.predictor is None:
            raise PruningError("DyRate needs a trained predictor: pass --predictor PATH (vtp-train-dyrate writes one)")
        return RatePredictor.load(self.predictor)

    def resolve_layer(self, predictor: RatePredictor) -> int:
        return self.layer if self.layer is not None else predictor.layer

    def validate(self, num_visual: int, num_layers: int, num_heads: int | None = None) -> None:
        """Raises PruningError: predictor missing or malformed, probe layer outside [0, L − 1], head count of the
        predictor ≠ the decoder's."""
        p = self.load_predictor()
        layer = self.resolve_layer(p)
        if not 0 <= layer < num_layers:
            raise PruningError(f"DyRate probe layer must be in [0, {num_layers - 1}], got {layer}")
        if num_heads is not None and p.num_heads != num_heads:
            raise PruningError(f"DyRate predictor {self.predictor!r} reads {p.num_heads} heads; this decoder has {num_heads}")
