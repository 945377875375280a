"""``vtp-eval``: accuracy, retention and speed of a converted checkpoint on a VQA task, with and without pruning.

Single run::

    vtp-eval --model DIR --task shapes|shapes-describe|jsonl:PATH [--limit N] [--method M] [--keep K | --keep-ratio R]
             [--layer K --criterion last|all --reindex|--original-positions]
             [--tau T] [--pivot cls|norm|center|first] [--cls-layer L] [--predictor PATH]
             [--max-new-tokens N | --gen-length N --steps S --block-length B] [--out DIR] [--json PATH]

evaluates the unpruned model and, unless ``--method none`` (the default), the pruned one; it reports the task
accuracy, the **retention** (pruned accuracy / unpruned accuracy; null when the unpruned accuracy is 0), the mean
latency and the throughput. A method that does not fit the checkpoint's family is an error (exit 2). The method
options mean what they mean in ``vtp-generate``: ``--layer`` (FastV / LLaDA-FastV layer K, ToDRE stage-2 layer ℓ,
DyRate probe layer), ``--criterion`` (FastV), ``--tau`` (ToDRE stage 2), ``--pivot`` / ``--cls-layer`` (ToDRE stage 1),
``--predictor`` (DyRate's rate predictor; default ``DIR/dyrate_predictor.safetensors`` when that file exists).
``--method`` may join stages with ``+`` (``todre+todre-relevance``, ``todre+dyrate``; llava only). Methods that take
no keep count (``todre-relevance``, ``dyrate``) refuse ``--keep`` / ``--keep-ratio``; their run is labelled by the
method alone and its ``keep_ratio`` is null.

Sweep::

    vtp-eval --model DIR --task T --sweep [--methods a,b] [--ratios 1.0,0.5,0.25,0.1] --out DIR

runs every method × keep ratio plus the unpruned baseline once and writes ``results.csv``, ``results.json`` and
``accuracy_vs_keep.png`` (accuracy against keep ratio, one line per method, the unpruned level dashed) into
``--out``. ``--methods`` defaults to every registered method that fits the family (``+``-joined specs allowed);
methods that do not fit are skipped with a note (and listed under ``"skipped"``). Methods that take no keep count
(``todre-relevance``, ``dyrate``) run once, not once per ratio, with ``keep_ratio`` null; the plot shows each as one
marker at its mean kept fraction with a dashed line at its accuracy. ``dyrate`` runs only when a predictor is
available (``--predictor`` or ``DIR/dyrate_predictor.safetensors``); otherwise it is skipped with that reason. A
registered method named ``random`` (if any) is added as a baseline unless ``--no-random``. A single run with
``--out`` writes the same three files.

Definitions (see also :mod:`eval.metrics`):

* **accuracy** — mean over records of the per-record score of each record's metric (exact match, VQA soft
  accuracy, yes/no correctness, multiple-choice correctness); ``by_metric`` adds per-metric means (yes/no also
  POPE's F1, precision, recall and yes-ratio) and ``by_kind`` per-``kind`` means.
* **keep** — as in ``vtp-generate``: ``--keep`` (a count) or ``--keep-ratio`` R (default 0.5; ToDRE 0.1, DivPrune 0.098) with
  LLaVA/FastV's ``round(N_v · R)`` and LLaDA-V/RedVTP's ``max(1, int(N_v · R))``. LLaDA-V's N_v depends on the
  image (anyres), so the count can vary by record; ``kept_fraction`` is the mean of kept / N_v, where kept is the
  visual tokens the prefill keeps (ToDRE stage 2: the set before stage 2; DyRate: all of them, 1.0 — DyRate prunes
  during decoding, see the next item).
* **decode_visual_kv_cut** — the DyRate metric (null for other methods): the share of the visual KV-cache entries
  that the decode steps did not attend, ``1 − Σ kept / Σ (steps · N_v)`` over every record's decode steps (answer
  tokens 1 … n − 1; token 0 comes from prefill), from ``GenerationOutput.kept_per_token``; N_v here is the visual
  tokens in the cache after prefill (after a pre-LLM stage, its keep count). Null when no record generated two
  tokens.
* **latency_s** — seconds of generation per record: the summed wall time of the timed batch calls (LLaVA prefill
  + decode; LLaDA-V encode + all denoising steps) divided by the number of records (with ``--batch-size 1`` this
  is the per-request latency); ``batch_latency_s`` is the mean time of one batch call.
* **tokens_per_s** — tokens produced per second of that wall time: LLaVA the answer tokens (EOS included);
  LLaDA-V the decoded positions (gen_length per record, like ``vtp-generate``).
* **compile_s** — wall time of the untimed first call of every new (method, batch shape) with ``--warmup`` ≥ 1
  (compilation included); these calls are not part of the timings above. With ``--warmup 0`` the first calls
  are timed and the timings include compilation.

Batching: every record is processed once to learn its prompt length (and, for LLaDA-V, its anyres layout);
records with the same bucket length (and layout) are batched together, up to ``--batch-size`` rows, and every
batch is padded with copies of its last record to a power of two (≤ ``--batch-size``) so the compiled programs
are reused; filler rows are dropped from scores and token counts (their compute is in the wall time). Processed
batches are kept in memory (up to 1 GiB of pixels) and shared by all runs of a sweep.

Checkpoints with random weights (``random_weights`` in ``vtp_jax.json``) are flagged in every output: their
accuracies are meaningless by design.

Shared with ``vtp-generate``, so both tools refuse and default the same way: :func:`vtp_jax.runtime.family_flags`
(flags of the other family refused, defaults filled) and :mod:`vtp_jax.runtime` (which methods fit which family,
keep counts, stop ids, the LLaDA-V sampler settings).

Memory: after the records are planned and before the weights are loaded, the memory the model needs for the
largest batch (rows × longest bucket + the tokens to generate) is estimated and checked as in ``vtp-generate``
(:mod:`vtp_jax.memory`; ``--skip-memory-check`` tries anyway); an out-of-memory inside XLA while loading or
generating is reported as ``vtp-eval: error: out of memory while …: needs ≈ X GB, Y GB available``.

Input checks, before any work: every numeric flag is range-checked by argparse as in ``vtp-generate``
(:mod:`vtp_jax.argtypes`; ``--seed`` / ``--task-seed`` in [0, 2³² − 1], ``nan`` / ``inf`` refused); ``--out`` and
``--json`` are tried for writing (a temporary file, removed at once) before the first record is read; task images
are opened as in ``vtp-generate`` (8-bit RGB, high bit depths scaled; more than ``--max-image-pixels N`` pixels,
default PIL's 89,478,485, refused with the record, the size and the limit).

Exit codes: 0 on success; 2 on bad input (task, model, method, flags, output paths) or too little memory, with a
message on stderr and no traceback.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import sys
from typing import Any, NamedTuple

import numpy as np

from vtp_jax import argtypes
from vtp_jax.families import MASKED_DIFFUSION
from vtp_jax.runtime import (
    add_input_arguments, add_sampler_arguments, check_method_family, eos_token_ids, family_record, family_stages,
    keep_ratio_used, processor_options,
)

RANDOM_WEIGHTS_NOTE = "this checkpoint has RANDOM weights: accuracies are meaningless by design (speed is real)"
DEFAULT_RATIOS = "1.0,0.5,0.25,0.1"
CACHE_BYTES = 1 << 30  # processed batches kept in memory for reuse across runs (pixel bytes)
CSV_COLUMNS = ("method", "keep_ratio", "keep", "kept_fraction", "decode_visual_kv_cut", "accuracy", "retention",
               "latency_s", "batch_latency_s", "tokens_per_s", "compile_s", "n", "metric")
RESULT_FILES = ("results.csv", "results.json", "accuracy_vs_keep.png")


class EvalError(ValueError):
    """Bad ``vtp-eval`` flags or output paths (exit code 2)."""


# ---------------------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vtp-eval", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="converted checkpoint directory (from vtp-convert)")
    p.add_argument("--task", required=True, help="'shapes', 'shapes-describe' or 'jsonl:PATH'")
    p.add_argument("--split", default="test", help="shapes split: train | val | test (default test)")
    p.add_argument("--task-seed", type=argtypes.SEED, default=0,
                   help=f"shapes generator seed in [0, {argtypes.SEED_MAX}] (default 0)")
    p.add_argument("--limit", type=argtypes.POSITIVE, default=None,
                   help="evaluate the first N ≥ 1 records (shapes: generate N)")
    p.add_argument("--post-prompt", default="", help="text appended (on a new line) to every question")
    p.add_argument("--method", default="none",
                   help="pruning method: none (default) | a registered method | stages joined by + "
                        "(e.g. todre+todre-relevance)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--keep", type=argtypes.POSITIVE, help="visual tokens to keep (count, ≥ 1)")
    g.add_argument("--keep-ratio", type=argtypes.PROBABILITY,
                   help="visual tokens to keep (fraction of N_v in (0, 1]; default 0.5, ToDRE 0.1, DivPrune 0.098)")
    p.add_argument("--layer", type=argtypes.NON_NEGATIVE, default=None,
                   help="method option: layer K (FastV, LLaDA-FastV), layer ℓ (todre-relevance), probe layer (dyrate)")
    p.add_argument("--criterion", default=None, choices=["last", "all"], help="FastV scoring rows")
    p.add_argument("--tau", type=argtypes.UNIT_INTERVAL, default=None,
                   help="todre-relevance: threshold of both ratios, in [0, 1] (default 0.10)")
    p.add_argument("--pivot", default=None, choices=["cls", "norm", "center", "first"],
                   help="ToDRE: first token of the diversity selection (default cls with a class token, else norm)")
    p.add_argument("--cls-layer", type=argtypes.integer(), default=None,
                   help="ToDRE pivot cls: vision layer of the class-token attention (HF hidden_states indexing)")
    p.add_argument("--predictor", default=None, metavar="PATH",
                   help="dyrate: rate predictor file (default: MODEL/dyrate_predictor.safetensors if present)")
    add_sampler_arguments(p)
    add_input_arguments(p)
    p.add_argument("--seed", type=argtypes.SEED, default=0,
                   help=f"sampling seed in [0, {argtypes.SEED_MAX}] (and the seed of methods that take one)")
    p.add_argument("--batch-size", type=argtypes.POSITIVE, default=8,
                   help="most records per generation call, ≥ 1 (default 8)")
    p.add_argument("--warmup", type=argtypes.NON_NEGATIVE, default=1,
                   help="untimed calls (≥ 0) of each new (method, batch shape) before timing it (default 1)")
    s = p.add_argument_group("sweep")
    s.add_argument("--sweep", action="store_true", help="methods × keep ratios, plus the unpruned baseline")
    s.add_argument("--methods", default=None, help="comma-separated (default: every method fitting the family)")
    s.add_argument("--ratios", default=None, help=f"comma-separated keep ratios (default {DEFAULT_RATIOS})")
    s.add_argument("--no-random", action="store_true", help="do not add the 'random' method as a baseline")
    p.add_argument("--out", default=None, help="folder for results.csv, results.json, accuracy_vs_keep.png")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results object to PATH")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--skip-memory-check", action="store_true",
                   help="load the model even when its memory estimate exceeds the memory available")
    return p


def _check_flags(args: argparse.Namespace) -> None:
    """Checks flag values and combinations that need no model. Raises EvalError."""
    if args.sweep:
        if args.method != "none" or args.keep is not None or args.keep_ratio is not None:
            raise EvalError("--sweep takes --methods and --ratios, not --method / --keep / --keep-ratio")
        if not args.out:
            raise EvalError("--sweep needs --out DIR")
    elif args.methods is not None or args.ratios is not None or args.no_random:
        raise EvalError("--methods / --ratios / --no-random only apply with --sweep")
    if args.method == "none" and (args.keep is not None or args.keep_ratio is not None):
        raise EvalError("--keep / --keep-ratio need a pruning --method")
    from vtp_jax.runtime import check_flag_values

    try:  # the command line has enforced these already; a Namespace built in Python has not
        check_flag_values(args)
    except ValueError as e:
        raise EvalError(str(e)) from None


def parse_ratios(text: str) -> list[float]:
    """"1.0,0.5" → [1.0, 0.5] (order kept, repeats dropped). Raises EvalError unless every value is in (0, 1]."""
    out: list[float] = []
    for part in text.split(","):
        try:
            v = float(part)
        except ValueError:
            raise EvalError(f"--ratios: {part.strip()!r} is not a number") from None
        if not 0.0 < v <= 1.0 or math.isnan(v):
            raise EvalError(f"--ratios: keep ratios must be in (0, 1], got {v}")
        if v not in out:
            out.append(v)
    return out


def _check_outputs(args: argparse.Namespace) -> None:
    """Checks, before any work, that ``--out`` can be created or written and that ``--json`` can be written.

    ``--out`` DIR: not an existing non-folder; its nearest existing folder (DIR itself, or the parent it would be
    created in) must take a new file — tried for real with a temporary file that is removed at once (permission
    bits alone do not tell: root ignores them, read-only mounts do not show in them); every result file
    (:data:`RESULT_FILES`) already in DIR must be a file that can be overwritten. ``--json`` PATH: its folder exists
    and takes a file, PATH is not a folder (:mod:`vtp_jax.paths`). Nothing is left behind. Raises EvalError /
    OutputPathError naming the flag and the path.
    """
    from vtp_jax.paths import check_output_dir, check_output_file

    if args.out:
        out = check_output_dir("--out", args.out)
        for name in RESULT_FILES:
            path = os.path.join(out, name)
            if os.path.isdir(path) or (os.path.lexists(path) and not os.path.isfile(path)):
                raise EvalError(f"--out: {path} exists and is not a file, so the results cannot be written there")
            if os.path.isfile(path) and not os.access(path, os.W_OK):
                raise EvalError(f"--out: {path} exists and cannot be overwritten")
    if args.json:
        check_output_file("--json", args.json)


# ---------------------------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------------------------

def score_predictions(records, preds: list[str]) -> tuple[list[float], dict[str, Any]]:
    """Per-record scores and their summary.

    Returns (scores, summary) with summary = {"accuracy": mean score, "n", "metric": the task's metric or
    "mixed", "by_metric": {metric: {"n", "accuracy"} (+ yes_no: "f1", "precision", "recall", "yes_ratio")},
    "by_kind": {kind: {"n", "accuracy"}} (records with a kind only)}. Raises MetricError for unusable gold data.
    """
    from eval import metrics

    scores = [metrics.score(r.metric, p, r.answers, r.choices) for r, p in zip(records, preds)]
    by_metric: dict[str, dict] = {}
    for name in sorted({r.metric for r in records}):
        idx = [i for i, r in enumerate(records) if r.metric == name]
        entry = {"n": len(idx), "accuracy": float(np.mean([scores[i] for i in idx]))}
        if name == "yes_no":
            f1 = metrics.yes_no_f1([preds[i] for i in idx], [records[i].answers[0] for i in idx])
            entry.update({k: f1[k] for k in ("f1", "precision", "recall", "yes_ratio")})
        by_metric[name] = entry
    by_kind: dict[str, dict] = {}
    for kind in sorted({r.kind for r in records if r.kind is not None}):
        idx = [i for i, r in enumerate(records) if r.kind == kind]
        by_kind[kind] = {"n": len(idx), "accuracy": float(np.mean([scores[i] for i in idx]))}
    summary = {"accuracy": float(np.mean(scores)), "n": len(scores),
               "metric": next(iter(by_metric)) if len(by_metric) == 1 else "mixed",
               "by_metric": by_metric, "by_kind": by_kind}
    return scores, summary


def retention(pruned: float, unpruned: float) -> float | None:
    """pruned / unpruned accuracy; None when the unpruned accuracy is 0 (undefined)."""
    return pruned / unpruned if unpruned > 0 else None


# ---------------------------------------------------------------------------------------------------------------
# the evaluator
# ---------------------------------------------------------------------------------------------------------------

class _Call(NamedTuple):
    """One generation call: answer ids per row, latency (s), tokens counted per row, visual tokens kept by the
    prefill, and for DyRate per row (Σ visual tokens in the cache over the decode steps, decode steps, visual tokens
    in the cache after prefill), else None."""

    ids: list[list[int]]
    latency: float
    counted: list[int]
    kept: int
    dyrate: list[tuple[int, int, int]] | None = None


@dataclasses.dataclass
class _Chunk:
    """One generation call: ``rows`` record indices (the real ones first), ``real`` of them real, the group key."""

    rows: list[int]
    real: int
    key: tuple


class Evaluator:
    """Loads the checkpoint and processor once, plans the batches of ``records``, and runs methods over them.

    Args:
      args: parsed flags (``model``, the generation flags, ``batch_size``, ``warmup``, ``post_prompt``…); the
        family's defaults are filled in (``vtp_jax.runtime.family_flags``), flags of the other family are refused.
      records: :class:`eval.tasks.Record` list.
      progress: show tqdm bars (stderr).

    The records are planned (processed, bucketed) before the weights are loaded, so the memory estimate of the
    largest batch is checked first (``self.budget``; :func:`vtp_jax.runtime.memory_budget`).

    Raises ValueError subclasses (CheckpointError, InputError, DiffusionError…) for a bad checkpoint, flags of
    the wrong family, or a record whose image or prompt cannot be processed (the record's id is named);
    MemoryCheckError when the estimate exceeds the memory available or loading runs out of memory.
    """

    def __init__(self, args: argparse.Namespace, records, *, progress: bool = True):
        from vtp_jax import memory, runtime
        from vtp_jax.checkpoint import load
        from vtp_jax.processing import load_processor

        self.args, self.records, self.progress = args, records, progress
        self.cfg, dtype, _ = memory.model_config(args.model)  # JSON only: weights once the estimate fits
        self.family = self.cfg.family
        self.kind = family_record(self.family).kind  # the generator kind decides the sampler and its outputs
        runtime.family_flags(args, self.family)
        self.processor = load_processor(args.model, self.cfg, prompt_format=getattr(args, "prompt_format", None),
                                        **processor_options(args))
        self.num_layers = self.cfg.text.num_hidden_layers
        self.dcfg = self._diffusion_config() if self.kind == MASKED_DIFFUSION else None
        self._generators: dict[Any, Any] = {}
        self._warm: set = set()
        self._cache: dict[int, Any] = {}
        self._cache_bytes = 0
        self.mesh = None
        if getattr(args, "mesh", None):  # batches are padded to a multiple of the data axis
            from vtp_jax.sharding import MeshError, make_mesh

            self.mesh = make_mesh(args.mesh)
            data = self.mesh.shape["data"]
            if args.batch_size % data:
                raise MeshError(f"--mesh: data={data} does not divide --batch-size {args.batch_size}")
        self.chunks = self._plan()
        self.budget = runtime.memory_budget(args, self.cfg, dtype, **self._largest_batch())
        with memory.oom_guard(f"loading {args.model}", self.budget):
            self.model, self.cfg, self.meta = load(args.model, mesh=self.mesh)

    @property
    def random_weights(self) -> bool:
        return bool(self.meta.get("random_weights", False))

    # ---- setup ---------------------------------------------------------------------------------------------
    def _diffusion_config(self):
        """LLaDA-V sampler settings, as vtp-generate builds them (mask id, suppressed and stop ids)."""
        from vtp_jax.runtime import diffusion_config

        a = self.args
        return diffusion_config(
            self.cfg, self.processor, gen_length=a.gen_length, block_length=a.block_length, steps=a.steps,
            remasking=a.remasking, cfg_scale=a.cfg, source=a.model, early_stop=a.early_stop, cache=a.cache,
            threshold=a.threshold, pruned_cache=a.pruned_cache,
            warn=lambda m: print(f"vtp-eval: warning: {m}", file=sys.stderr),
        )

    def generation_settings(self) -> dict[str, Any]:
        """The sampler settings used (JSON-able)."""
        a = self.args
        common = {"temperature": a.temperature, "seed": a.seed, "batch_size": a.batch_size, "warmup": a.warmup,
                  "post_prompt": a.post_prompt}
        if self.kind == MASKED_DIFFUSION:
            d = self.dcfg
            return {**common, "gen_length": d.gen_length, "block_length": d.block_length, "steps": d.steps,
                    "remasking": d.remasking, "cfg": d.cfg, "early_stop": d.early_stop, "cache": d.cache,
                    "threshold": d.threshold, "pruned_cache": d.pruned_cache}
        return {**common, "max_new_tokens": a.max_new_tokens, "top_p": a.top_p}

    def _process(self, rows: list[int]):
        """Images + prompts of ``rows`` → a :class:`vtp_jax.processing.Batch`. Errors name the records."""
        from vtp_jax.processing import InputError

        recs = [self.records[i] for i in rows]
        try:
            images = [r.load_image(max_pixels=getattr(self.args, "max_image_pixels", None)) for r in recs]
            return self.processor(images, [r.prompt(self.args.post_prompt) for r in recs])
        except ValueError as e:
            ids = ", ".join(dict.fromkeys(r.id for r in recs))
            raise InputError(f"record {ids}: {e}") from None

    def _plan(self) -> list[_Chunk]:
        """Processes every record alone (prompt length, N_v, layout), checks it fits the model's positions, and
        groups records into batches of one bucket length (and one anyres layout)."""
        from tqdm import tqdm

        from vtp_jax.processing import InputError, bucket_length

        max_pos = self.cfg.text.max_position_embeddings
        groups: dict[tuple, list[int]] = {}
        with tqdm(self.records, desc="preparing", unit="rec", disable=not self.progress, file=sys.stderr,
                  mininterval=0.5, leave=False) as bar:
            for i, rec in enumerate(bar):
                b = self._process([i])
                length = len(b.prompt_ids[0])
                if self.kind == MASKED_DIFFUSION:
                    need, what = length + self.dcfg.gen_length, f"--gen-length {self.dcfg.gen_length}"
                    layout = self.processor.layout(b.image_inputs["image_size"])
                else:
                    need = b.input_ids.shape[1] + self.args.max_new_tokens
                    what = f"--max-new-tokens {self.args.max_new_tokens}"
                    layout = None
                if need > max_pos:
                    raise InputError(f"record {rec.id}: prompt ({length} tokens, padded to {b.input_ids.shape[1]}) "
                                     f"plus {what} exceeds the model's {max_pos} positions")
                key = (bucket_length(length), int(b.num_visual_tokens), layout)
                groups.setdefault(key, []).append(i)
        chunks = []
        bs = self.args.batch_size
        for key in sorted(groups, key=lambda k: (k[0], k[1], repr(k[2]))):
            idx = groups[key]
            for s in range(0, len(idx), bs):
                real = idx[s:s + bs]
                size = min(1 << (len(real) - 1).bit_length(), bs)  # next power of two, at most the batch size
                if self.mesh is not None:  # a multiple of the mesh's data axis (it divides the batch size)
                    data = self.mesh.shape["data"]
                    size = -(-size // data) * data
                chunks.append(_Chunk(real + [real[-1]] * (size - len(real)), len(real), key))
        return chunks

    def _largest_batch(self) -> dict[str, int]:
        """Lengths for the memory estimate: the largest planned batch rows (doubled by LLaDA-V guidance) and the
        longest bucket plus the tokens to generate (upper bounds over all batches)."""
        if not self.chunks:  # no records: nothing runs but the weights
            return dict(batch_size=0, seq_len=0, logit_rows=0, vision_images=0)
        rows = max(len(c.rows) for c in self.chunks)
        longest = max(c.key[0] for c in self.chunks)
        if self.kind == MASKED_DIFFUSION:
            tiles = max(c.key[2].num_tiles for c in self.chunks)  # the anyres layout of the batch
            new = self.dcfg.gen_length
            return dict(batch_size=rows * (2 if self.dcfg.cfg > 0 else 1), seq_len=longest + new, logit_rows=new,
                        vision_images=rows * tiles)
        return dict(batch_size=rows, seq_len=longest + self.args.max_new_tokens, logit_rows=1, vision_images=rows)

    def _batch(self, ci: int):
        if ci in self._cache:
            return self._cache[ci]
        batch = self._process(self.chunks[ci].rows)
        nbytes = int(batch.pixel_values.nbytes)
        if self._cache_bytes + nbytes <= CACHE_BYTES:
            self._cache[ci], self._cache_bytes = batch, self._cache_bytes + nbytes
        return batch

    # ---- methods -------------------------------------------------------------------------------------------
    def visual_counts(self) -> list[int]:
        """The distinct N_v of the planned batches."""
        return sorted({c.key[1] for c in self.chunks})

    def methods_for(self, name: str, keep: int | None, keep_ratio: float | None,
                    options: dict[str, Any]) -> dict[int, Any]:
        """{N_v: method instance (None for "none"; a tuple for a ``+``-joined spec)} for every N_v of the task,
        validated against the model (LLaVA: the generator is built too, so DyRate's predictor is checked against
        the decoder's heads before any generation).

        ``keep`` / ``keep_ratio`` as in vtp-generate (ratio default 0.5, ToDRE 0.1, DivPrune 0.098; LLaVA rounds, LLaDA-V floors).
        Raises InputError (family mismatch) or PruningError (unknown method or option, keep or layer out of range,
        a missing or unfitting DyRate predictor).
        """
        from vtp_jax.runtime import build_methods

        out = {
            n_v: build_methods(name, self.family, n_v, self.num_layers, keep=keep, keep_ratio=keep_ratio, **options)
            for n_v in self.visual_counts()
        }
        for method in out.values():
            if method is not None:
                self._generator(method)  # builds it: DyRate's predictor is checked before any generation
        return out

    def _generator(self, method):
        from vtp_jax.generation import make_generator

        if method not in self._generators:
            self._generators[method] = make_generator(self.model, method, diffusion=self.dcfg, mesh=self.mesh)
        return self._generators[method]

    def _settings(self):
        """The :class:`vtp_jax.generation.SamplerSettings` of every call."""
        from vtp_jax.generation import SamplerSettings

        a = self.args
        return SamplerSettings(temperature=a.temperature, seed=a.seed, top_p=a.top_p or 1.0,
                               max_new_tokens=a.max_new_tokens or 1,
                               eos_token_ids=eos_token_ids(self.cfg, self.processor),
                               pad_token_id=self.processor.pad_token_id)

    def _generate(self, gen, batch) -> "_Call":
        """One generation call (see :class:`_Call`): the generators' shared ``generate(batch, settings)``."""
        out = gen.generate(batch, self._settings())
        ids = [out.answer_ids(b) for b in range(len(out.num_new_tokens))]
        if self.kind == MASKED_DIFFUSION:  # every position is decoded whatever the answer's length
            return _Call(ids, out.latency_s, [out.tokens.shape[1]] * len(ids), int(out.kept.shape[1]))
        dy = None
        if out.kept_per_token is not None:  # DyRate: visual tokens attended by each row's decode steps
            kpt = np.asarray(out.kept_per_token)
            dy = [(int(kpt[b, 1:n].sum()), max(int(n) - 1, 0), int(kpt[b, 0])) for b, n in enumerate(out.num_new_tokens)]
        return _Call(ids, out.latency_s, list(out.num_new_tokens), int(out.kept.shape[1]), dy)

    # ---- a run ---------------------------------------------------------------------------------------------
    def run(self, name: str, methods: dict[int, Any], *, keep_ratio: float | None, label: str) -> dict[str, Any]:
        """Generates for every record with ``methods`` ({N_v: method}); returns the run's row (without retention)
        and its predictions under ``"predictions"``."""
        from tqdm import tqdm

        n = len(self.records)
        preds: list[str | None] = [None] * n
        timed_s = tokens = batches = 0
        compile_s = 0.0
        kept_frac = np.zeros(n)
        keeps = set()
        dy_kept = dy_total = 0  # DyRate: Σ visual tokens attended, Σ steps · N_v (real rows of every batch)
        dyrate = False
        with tqdm(total=n, desc=label, unit="rec", disable=not self.progress, file=sys.stderr, mininterval=0.5,
                  leave=False) as bar:
            for ci, chunk in enumerate(self.chunks):
                batch = self._batch(ci)
                n_v = chunk.key[1]
                method = methods[n_v]
                gen = self._generator(method)
                shape = (method, batch.input_ids.shape, batch.pixel_values.shape,
                         tuple(sorted((k, v) for k, v in batch.image_inputs.items() if not isinstance(v, np.ndarray))))
                if shape not in self._warm:
                    self._warm.add(shape)
                    for w in range(self.args.warmup):
                        latency = self._generate(gen, batch)[1]
                        compile_s += latency if w == 0 else 0.0
                ids, latency, counted, kept, dy = self._generate(gen, batch)
                timed_s += latency
                batches += 1
                tokens += sum(counted[: chunk.real])
                keeps.add(kept)
                for row, i in enumerate(chunk.rows[: chunk.real]):
                    preds[i] = self.processor.decode(ids[row])
                    kept_frac[i] = kept / n_v
                if dy is not None:
                    dyrate = True
                    dy_kept += sum(k for k, _, _ in dy[: chunk.real])
                    dy_total += sum(steps * nv for _, steps, nv in dy[: chunk.real])
                bar.update(chunk.real)
        scores, summary = score_predictions(self.records, preds)
        row = {
            "method": name, "keep_ratio": keep_ratio, "keep": keeps.pop() if len(keeps) == 1 else None,
            "kept_fraction": float(kept_frac.mean()),
            "decode_visual_kv_cut": 1.0 - dy_kept / dy_total if dyrate and dy_total else None,
            "accuracy": summary["accuracy"], "retention": None,
            "latency_s": timed_s / n, "batch_latency_s": timed_s / batches,
            "tokens_per_s": tokens / timed_s if timed_s > 0 else None, "compile_s": compile_s, "n": n,
            "metric": summary["metric"], "by_metric": summary["by_metric"], "by_kind": summary["by_kind"],
        }
        row["predictions"] = [
            {"id": r.id, "prediction": p, "answers": r.answers, "score": s}
            for r, p, s in zip(self.records, preds, scores)
        ]
        return row


# ---------------------------------------------------------------------------------------------------------------
# single run and sweep
# ---------------------------------------------------------------------------------------------------------------

METHOD_OPTIONS = ("layer", "criterion", "reindex", "tau", "pivot", "cls_layer", "predictor", "score_step")  # flags → options


def _spec_classes(spec: str) -> list:
    """The registered classes of a method spec (one name or several joined by ``+``); None for unknown names."""
    from vtp_jax.pruning import METHODS

    return [METHODS.get(n.strip()) for n in spec.split("+")]


def takes_keep(spec: str) -> bool:
    """Whether a method spec takes a keep count (``--keep`` / ``--keep-ratio``, the sweep's ratios): False for
    ``none`` and for specs whose methods all decide for themselves (``todre-relevance``, ``dyrate``)."""
    if spec == "none":
        return False
    return any(cls is None or cls.takes_keep for cls in _spec_classes(spec))


def _predictor(args: argparse.Namespace, spec: str) -> str | None:
    """DyRate's predictor for ``spec``: ``--predictor``, else the model folder's default file (vtp-generate's rule)."""
    from vtp_jax.runtime import default_predictor

    model = getattr(args, "model", None)
    given = getattr(args, "predictor", None)
    return default_predictor(spec, given, model) if model is not None else given


def _method_options(args: argparse.Namespace, name: str, *, strict: bool) -> tuple[dict[str, Any], list[str]]:
    """Method options from the flags → (options, notes). ``seed`` is passed to methods that have that field;
    ``predictor`` defaults to the model folder's ``dyrate_predictor.safetensors`` (if present) for specs with
    ``dyrate``. ``name`` may join methods with ``+`` (the options of all of them count).

    strict: pass every given option (make_method / build_methods refuse those no method takes); otherwise drop
    them with a note.
    """
    given = {k: getattr(args, k, None) for k in METHOD_OPTIONS}
    given["predictor"] = _predictor(args, name)
    given = {k: v for k, v in given.items() if v is not None}
    fields: set[str] = set()
    for cls in _spec_classes(name):
        if cls is not None and dataclasses.is_dataclass(cls):
            fields |= {f.name for f in dataclasses.fields(cls)}
    notes = []
    if not strict:
        dropped = sorted(k for k in given if k not in fields)
        if dropped:
            flags = ", ".join("--" + k.replace("_", "-") for k in dropped)
            notes.append(f"{name}: ignored option(s) {flags} (not options of it)")
        given = {k: v for k, v in given.items() if k in fields}
    if "seed" in fields:
        given["seed"] = args.seed
    return given, notes


def _sweep_plan(args: argparse.Namespace, family: str) -> tuple[list[str], list[dict], list[str]]:
    """(methods to run, skipped [{"method", "reason"}], notes). Raises PruningError for an unknown name."""
    from vtp_jax.processing import InputError
    from vtp_jax.pruning import METHODS, PruningError

    stages = family_stages(family)
    if args.methods is None:
        names = [n for n in sorted(METHODS) if METHODS[n].stage in stages]
    else:
        names = list(dict.fromkeys(n.strip() for n in args.methods.split(",") if n.strip() and n.strip() != "none"))
        unknown = sorted({p.strip() for n in names for p in n.split("+") if p.strip() not in METHODS})
        if unknown:
            raise PruningError(f"unknown pruning method(s) {', '.join(map(repr, unknown))} "
                               f"(available: none, {', '.join(sorted(METHODS))})")
    notes = []
    if "random" in METHODS and "random" not in names and not args.no_random:
        names.append("random")
        notes.append("added the 'random' method as a baseline (--no-random to leave it out)")
    run, skipped = [], []
    for n in names:
        try:
            for part in n.split("+"):
                check_method_family(part.strip(), family)
        except InputError as e:
            skipped.append({"method": n, "reason": str(e)})
            continue
        if "dyrate" in [p.strip() for p in n.split("+")] and _predictor(args, n) is None:
            skipped.append({"method": n, "reason": "DyRate needs a trained predictor: pass --predictor PATH or put "
                                                   "dyrate_predictor.safetensors in the model folder "
                                                   "(vtp-train-dyrate writes one)"})
            continue
        run.append(n)
    return run, skipped, notes


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Runs ``vtp-eval`` (single run or sweep) and returns the results object (also written where asked).

    Results: {"task", "split" (shapes only, else null), "records", "model", "family", "random_weights", "notes", "settings", "rows" (one per run, the
    unpruned baseline first; CSV columns plus "by_metric" / "by_kind"), "skipped", "predictions" ({run label:
    [{"id", "prediction", "answers", "score"}]})}. Raises ValueError subclasses on bad input.
    """
    from eval.tasks import load_task

    _check_flags(args)
    from vtp_jax.runtime import join_processes

    join_processes(args)  # every process runs this; process 0 writes the outputs
    ratios = parse_ratios(args.ratios or DEFAULT_RATIOS) if args.sweep else None
    _check_outputs(args)
    records = load_task(args.task, split=args.split, n=args.limit, seed=args.task_seed)
    if args.limit is not None:
        records = records[: args.limit]
    ev = Evaluator(args, records, progress=not args.no_progress)

    notes: list[str] = [RANDOM_WEIGHTS_NOTE] if ev.random_weights else []
    skipped: list[dict] = []
    runs: list[tuple[str, float | None, dict[int, Any], str]] = []  # (method, keep ratio, methods, label)
    runs.append(("none", 1.0, ev.methods_for("none", None, None, {}), "none"))
    if args.sweep:
        names, skipped, sweep_notes = _sweep_plan(args, ev.family)
        notes += sweep_notes + [f"skipped {s['method']}: {s['reason']}" for s in skipped]
        for name in names:  # all validated before any generation
            options, opt_notes = _method_options(args, name, strict=False)
            notes += opt_notes
            if not takes_keep(name):  # decides for itself (todre-relevance, dyrate): one run
                runs.append((name, None, ev.methods_for(name, None, None, options), name))
                continue
            for r in ratios:
                runs.append((name, r, ev.methods_for(name, None, r, options), f"{name} keep={r:g}"))
    elif args.method != "none":
        options, _ = _method_options(args, args.method, strict=True)
        methods = ev.methods_for(args.method, args.keep, args.keep_ratio, options)
        if not takes_keep(args.method):
            ratio, label = None, args.method
        else:
            ratio = keep_ratio_used(args.method, args.keep, args.keep_ratio)
            label = f"{args.method} keep={args.keep}" if args.keep is not None else f"{args.method} keep={ratio:g}"
        runs.append((args.method, ratio, methods, label))

    from vtp_jax import memory

    rows, predictions = [], {}
    for name, ratio, methods, label in runs:
        with memory.oom_guard(f"generating ({label})", ev.budget):
            row = ev.run(name, methods, keep_ratio=ratio, label=label)
        predictions[label] = row.pop("predictions")
        rows.append(row)
    base = rows[0]["accuracy"]
    for row in rows[1:]:
        row["retention"] = retention(row["accuracy"], base)
    if rows[1:] and base == 0:
        notes.append("retention is undefined (null): the unpruned accuracy is 0")
    result = {
        "task": args.task, "split": args.split if args.task.startswith("shapes") else None, "records": len(records), "model": os.path.abspath(args.model), "family": ev.family,
        "random_weights": ev.random_weights, "notes": notes, "settings": ev.generation_settings(), "rows": rows,
        "skipped": skipped, "predictions": predictions,
    }
    from vtp_jax.sharding import is_primary

    if not is_primary():
        return result
    if args.out:
        write_results(args.out, result)
    if args.json:
        _write_json(args.json, result)
    return result


# ---------------------------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------------------------

def _write_json(path: str, result: dict) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")


def write_results(out_dir: str, result: dict) -> list[str]:
    """Writes ``results.csv`` (one row per run, :data:`CSV_COLUMNS`), ``results.json`` (the whole results object)
    and ``accuracy_vs_keep.png`` into ``out_dir``; returns their paths. Raises OSError if they cannot be written."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f) for f in RESULT_FILES]
    with open(paths[0], "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in result["rows"]:
            w.writerow({k: ("" if row.get(k) is None else row[k]) for k in CSV_COLUMNS})
    _write_json(paths[1], result)
    plot_accuracy_vs_keep(result, paths[2])
    return paths


def plot_accuracy_vs_keep(result: dict, path: str) -> None:
    """Accuracy (y, [0, 1]) against keep ratio (x; the kept fraction when a count was given), one line per method,
    the unpruned accuracy as a dashed horizontal line. Methods that take no keep count (todre-relevance, dyrate)
    are one marker at their mean kept fraction with a thin dashed line at their accuracy, labelled with the method
    (DyRate: and its decode visual KV cut). Drawn with matplotlib's Agg canvas (no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = result["rows"]
    fig = Figure(figsize=(6.4, 4.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    base = rows[0]
    ax.axhline(base["accuracy"], color="black", linestyle="--", linewidth=1.2,
               label=f"unpruned ({base['accuracy']:.3f})")
    methods = list(dict.fromkeys(r["method"] for r in rows[1:]))
    markers = iter("Ds^vP*X")
    for m in methods:
        if not takes_keep(m):
            for r in (r for r in rows[1:] if r["method"] == m):
                cut = r.get("decode_visual_kv_cut")
                label = m + (f" (decode visual KV cut {cut:.0%})" if cut is not None else "")
                (line,) = ax.plot([r["kept_fraction"]], [r["accuracy"]], marker=next(markers, "o"), markersize=8,
                                  linestyle="none", label=label)
                ax.axhline(r["accuracy"], color=line.get_color(), linestyle="--", linewidth=0.8, alpha=0.6)
            continue
        pts = sorted((r["keep_ratio"] if r["keep_ratio"] is not None else r["kept_fraction"], r["accuracy"])
                     for r in rows[1:] if r["method"] == m)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                linestyle=":" if m == "random" else "-", label=m)
    metric = base.get("metric", "accuracy")
    ax.set_xlabel("keep ratio (fraction of visual tokens kept)")
    ax.set_ylabel(f"accuracy ({'mixed metrics' if metric == 'mixed' else metric})")
    ax.set_xlim(0.0, 1.05)
    ax.set_ylim(-0.02, 1.02)
    task = result["task"]
    task = "jsonl:" + os.path.basename(task[6:]) if task.startswith("jsonl:") else task
    task += f" ({result['split']})" if result.get("split") else ""
    title = f"{task} · {result['family']} · {result['records']} records"
    if result.get("random_weights"):
        title += "\nRANDOM WEIGHTS: accuracies are meaningless"
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _fmt(v, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_table(result: dict) -> str:
    """Human-readable summary: notes, then one line per run."""
    lines = [f"[note] {n}" for n in result["notes"]]
    s = result["settings"]
    lines.append(f"task {result['task']} ({result['records']} records) | model {result['family']} | "
                 f"batch ≤ {s['batch_size']}")
    w = max([14] + [len(r["method"]) + 1 for r in result["rows"]])
    lines.append(f"{'method':<{w}}{'keep':>7}{'kept':>7}{'kv_cut':>8}{'accuracy':>10}{'retention':>11}"
                 f"{'latency_s':>11}{'tokens/s':>10}{'compile_s':>11}")
    for r in result["rows"]:
        if r["keep_ratio"] is not None:
            keep = _fmt(r["keep_ratio"], ".2f")
        else:  # a --keep count, or "-" for a method that takes none
            keep = str(r["keep"]) if takes_keep(r["method"]) or r["method"] == "none" else "-"
        lines.append(f"{r['method']:<{w}}{keep:>7}{_fmt(r['kept_fraction'], '.2f'):>7}"
                     f"{_fmt(r.get('decode_visual_kv_cut'), '.3f'):>8}{_fmt(r['accuracy'], '.3f'):>10}"
                     f"{_fmt(r['retention'], '.3f'):>11}{_fmt(r['latency_s'], '.4f'):>11}"
                     f"{_fmt(r['tokens_per_s'], '.1f'):>10}{_fmt(r['compile_s'], '.2f'):>11}")
        yn = r["by_metric"].get("yes_no")
        if yn:
            lines.append(f"{'':<{w}}yes/no: accuracy {yn['accuracy']:.3f}, F1 {yn['f1']:.3f}, "
                         f"yes-ratio {yn['yes_ratio']:.2f} ({yn['n']} records)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI; returns the exit code (0 success, 2 bad input; argparse usage errors return 2 too)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # usage error (2) or --help (0); argparse has printed its message
        return int(e.code or 0)
    try:
        result = evaluate(args)
    except ValueError as e:  # TaskError, EvalError, InputError, PruningError, CheckpointError, MemoryCheckError…
        print(f"vtp-eval: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # writing the outputs failed after all
        print(f"vtp-eval: error: cannot write the results: {e}", file=sys.stderr)
        return 2
    from vtp_jax.sharding import is_primary

    if not is_primary():
        return 0  # several processes: process 0 prints
    print(format_table(result))
    if args.out:
        print(f"wrote {', '.join(os.path.join(args.out, f) for f in RESULT_FILES)}")
    if args.json:
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
