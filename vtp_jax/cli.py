"""``vtp-generate``: jit-compiled generation from a converted checkpoint, with or without visual token pruning.

The model family comes from the converted config (``cfg.family``):

* ``llava`` — autoregressive decoding (prefill + KV-cache decode loop); pruning ``--method fastv``.
  Flags: ``--max-new-tokens``, ``--top-p``, ``--layer``, ``--criterion``.
* ``llada_v`` — masked-diffusion sampling (LLaDA's loop); pruning ``--method redvtp`` (keep ratio 0.5 by default:
  ``keep = max(1, int(N_v · 0.5))``). Flags: ``--gen-length``, ``--steps``, ``--block-length``, ``--remasking``,
  ``--cfg``. Ids never predicted at masked positions: ``<|endoftext|>``, ``<|startoftext|>``,
  ``<|start_header_id|>``, ``<|end_header_id|>`` (LLaDA-V's 126081, 126080, 126346, 126347), looked up in the
  checkpoint's tokenizer; the answer stops at ``<|endoftext|>`` / ``<|eot_id|>`` (and the tokenizer's EOS).
* both families — pruning before the LLM (the decoder only sees the kept visual tokens): ``--method todre``
  (ToDRE stage 1; ``--pivot``, ``--cls-layer``), ``divprune``, ``random`` (seeded by ``--seed``).
* llava — ToDRE stage 2 inside the LLM: ``--method todre-relevance`` (``--tau``, default 0.10; ``--layer`` ℓ, default
  ⌊7L/8⌋; no keep count: all visual tokens are dropped from layer ℓ on when both attention ratios fall below τ).
  Stages combine with ``+``, at most one per stage, in stage order: ``--method todre+todre-relevance`` runs ToDRE
  stage 1 (``--keep``/``--keep-ratio``, ``--pivot``) then stage 2 (``--tau``, ``--layer``).
* llava — DyRate during decoding: ``--method dyrate`` (``--predictor PATH``, a ``vtp-train-dyrate`` file; default
  ``<--model>/dyrate_predictor.safetensors`` when that file exists; ``--layer``: probe layer, default the
  predictor's; no keep count: the predictor picks the pruning rate at every generated token and the least-attended
  visual tokens leave the KV cache). Combines with a pre-LLM method: ``--method todre+dyrate``.

``--json`` prints one object: ``text``, ``prompt_ids`` (image placeholders expanded), ``output_ids`` (answer tokens
up to and including the first stop id), ``num_visual_tokens``, ``kept_visual_indices`` (ascending), ``method``, ``family``,
``stages`` (per method of ``--method``: its kept indices, or for ``todre-relevance`` ``{"dropped", "alpha_t2v",
"alpha_v2t", "layer", "tau"}``, for ``dyrate`` ``{"kept_per_token", "rate_per_token", "rates", "layer"}``;
``kept_visual_indices`` is the final set — empty when stage 2 fired; with DyRate the set the prefill saw),
DyRate only: ``kept_per_token`` (visual tokens in the KV cache when each answer token was generated, one entry per
``output_ids`` token; the first, made by prefill, saw all N_v of them — N_v being the visual tokens the decoder
got, a pre-LLM stage's keep count with one) and ``decode_visual_kv_cut`` (share of those visual KV entries the
decode steps did not attend, ``1 − Σ kept / (steps · N_v)`` over tokens 1 … n − 1; null with fewer than two
tokens), ``random_weights``, ``timings`` (seconds, medians over ``--runs``: ``prefill_s`` — LLaVA prefill / LLaDA-V encode;
``decode_s`` — LLaVA decode loop / LLaDA-V denoising; ``latency_s``; ``tokens_per_s`` — LLaVA decode throughput /
LLaDA-V decoded positions (gen_length) per second of latency; ``runs``; ``first_call_s``, compilation included); LLaDA-V adds
``diffusion`` (the sampler settings). Per-row arrays are reported for row 0 (the one prompt), as plain lists.

Memory: before loading, the memory the model needs for this prompt is estimated from ``config.json`` and the
stored dtype (parameters exactly, plus KV cache, one layer's activations and a fixed runtime allowance; see
:mod:`vtp_jax.memory`) and compared with what the machine has (``VTP_MEMORY_LIMIT_BYTES`` if set, else free
accelerator memory, else the host's MemAvailable). A model that does not fit is refused with
``vtp-generate: error: <model dir>: needs ≈ X GB, Y GB available (…)``; ``--skip-memory-check`` tries anyway. An
out-of-memory inside XLA while loading or generating is reported the same way (``out of memory while …``).

Input checks, before anything loads: every numeric flag is range-checked by argparse (:mod:`vtp_jax.argtypes`:
``--seed`` in [0, 2³² − 1]; ``--temperature``, ``--cfg`` finite ≥ 0; ``--top-p``, ``--keep-ratio`` in (0, 1];
``--tau`` in [0, 1]; counts ≥ 1; ``--warmup`` ≥ 0; ``nan`` / ``inf`` refused). The image is opened as 8-bit RGB
(16-bit and float images scaled, not clipped; alpha composited over white: :func:`vtp_jax.processing.to_rgb`);
an image of more than ``--max-image-pixels N`` pixels (default PIL's 89,478,485) is refused from its header with
its size and the limit.

Exit codes: 0 on success, 2 on bad input or too little memory (message on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

from vtp_jax import argtypes
from vtp_jax.runtime import (  # noqa: F401  (family_flags, memory_budget, … re-exported for older callers)
    add_input_arguments, add_sampler_arguments, build_methods, check_flag_values, check_method_family,
    check_positions, default_predictor, diffusion_config, eos_token_ids, family_flags, family_record, join_processes,
    memory_budget, processor_options,
)

from vtp_jax.families import AUTOREGRESSIVE, MASKED_DIFFUSION


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vtp-generate", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="converted checkpoint directory (from vtp-convert)")
    p.add_argument("--image", required=True, help="image file (any mode PIL opens; high bit depths scaled to 8 bits)")
    p.add_argument("--prompt", required=True, help="question / instruction text")
    p.add_argument("--method", default="none",
                   help="pruning method: none | fastv, todre-relevance, dyrate (llava) | redvtp, llada-fastv "
                        "(llada_v) | todre, divprune, random (both, before the LLM); combine stages with +, e.g. "
                        "todre+todre-relevance")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--keep", type=argtypes.POSITIVE, help="visual tokens to keep (count, ≥ 1)")
    g.add_argument("--keep-ratio", type=argtypes.PROBABILITY,
                   help="visual tokens to keep (fraction of N_v; default 0.5, ToDRE 0.1, DivPrune 0.098; LLaVA round(N_v·R), LLaDA-V int(N_v·R))")
    p.add_argument("--layer", type=argtypes.NON_NEGATIVE, default=None,
                   help="FastV: decoder layer K at which to prune (default 2); todre-relevance: layer ℓ (default "
                        "7L/8); dyrate: probe layer (0-based; default the predictor's)")
    p.add_argument("--tau", type=argtypes.UNIT_INTERVAL, default=None,
                   help="todre-relevance: drop all visual tokens when both attention ratios are below tau, in [0, 1] "
                        "(default 0.10)")
    p.add_argument("--criterion", default=None, choices=["last", "all"], help="FastV scoring rows (default last)")
    p.add_argument("--pivot", default=None, choices=["cls", "norm", "center", "first"],
                   help="ToDRE: first token of the diversity selection (default cls with a class token, else norm)")
    p.add_argument("--cls-layer", type=argtypes.integer(), default=None,
                   help="ToDRE pivot cls: vision layer of the class-token attention, HF hidden_states indexing "
                        "(default: the vision feature layer; -1: the tower's last layer)")
    p.add_argument("--predictor", default=None, metavar="PATH",
                   help="dyrate: rate predictor file from vtp-train-dyrate (default: MODEL/dyrate_predictor.safetensors "
                        "if present)")
    add_sampler_arguments(p)
    add_input_arguments(p)
    p.add_argument("--seed", type=argtypes.SEED, default=0,
                   help=f"sampling seed in [0, {argtypes.SEED_MAX}] (and the seed of methods that take one: random)")
    p.add_argument("--warmup", type=argtypes.NON_NEGATIVE, default=1,
                   help="untimed runs first (≥ 0), so timings exclude compilation")
    p.add_argument("--runs", type=argtypes.POSITIVE, default=1, help="timed runs (≥ 1); timings are their medians")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")
    p.add_argument("--skip-memory-check", action="store_true",
                   help="load the model even when its memory estimate exceeds the memory available")
    return p


def _median(xs) -> float:
    return float(np.median(xs))


def _timed_runs(generate, args) -> tuple[list, float | None]:
    """``--warmup`` untimed calls, then ``--runs`` timed ones → (timed outputs, first call's latency or None)."""
    first_call_s = None
    for _ in range(args.warmup):
        warm = generate()
        first_call_s = first_call_s if first_call_s is not None else warm.latency_s
    return [generate() for _ in range(args.runs)], first_call_s


def run(args: argparse.Namespace) -> dict:
    """Reads the config, processes the prompt, checks the memory estimate, loads, generates; returns the JSON-able
    result. Raises ValueError subclasses on bad input (MemoryCheckError when the model does not fit or runs out of
    memory)."""
    from vtp_jax import memory
    from vtp_jax.checkpoint import load
    from vtp_jax.processing import InputError, load_image

    check_flag_values(args)
    join_processes(args)  # several processes: every one runs this command, only process 0 prints
    mesh = None
    if getattr(args, "mesh", None):  # checked before the image and the weights are read
        from vtp_jax.sharding import make_mesh

        mesh = make_mesh(args.mesh)
    image = load_image(args.image, max_pixels=getattr(args, "max_image_pixels", None))
    cfg, dtype, _ = memory.model_config(args.model)  # JSON only: the weights are loaded once the estimate fits
    family_flags(args, cfg.family)
    check_method_family(args.method, cfg.family)
    kind = family_record(cfg.family).kind
    prep = _PREPARE[kind](args, image, cfg)
    if mesh is not None:
        from vtp_jax.sharding import batch_sharding, check_divides

        ids = prep["batch"].input_ids
        check_divides(batch_sharding(mesh, ids.ndim).spec, ids.shape, mesh.shape, "--mesh: the batch (one prompt)")
    prep["mesh"] = mesh
    budget = memory_budget(args, cfg, dtype, **prep["lengths"])
    with memory.oom_guard(f"loading {args.model}", budget):
        model, cfg, meta = load(args.model, mesh=mesh)
    with memory.oom_guard("generating (compiling and running)", budget):
        result = _generate(args, model, cfg, prep)
    result["random_weights"] = bool(meta.get("random_weights", False))
    if mesh is not None:
        import jax

        result["mesh"] = {**{k: int(v) for k, v in mesh.shape.items()}, "processes": jax.process_count()}
    return result


def _prepare_autoregressive(args, image, cfg) -> dict:
    """Autoregressive (LLaVA) inputs that need no weights: method, processor, batch, and the lengths of the memory estimate."""
    from vtp_jax.processing import load_processor

    processor = load_processor(args.model, cfg, **processor_options(args))
    batch = processor([image], [args.prompt])
    # N_v from the processed prompt: a fixed count for LLaVA-1.5, the image's anyres layout for LLaVA-NeXT
    method = _method(args, cfg.family, batch.num_visual_tokens, cfg.text.num_hidden_layers)
    check_positions(cfg, batch.input_ids.shape[1], args.max_new_tokens, "--max-new-tokens")
    rows, length = (int(n) for n in batch.input_ids.shape)
    px = batch.pixel_values  # [B, 3, H, W]; [B, tiles, 3, S, S] with anyres tiles; [B, P, C·T·p·p] flat patches
    lengths = dict(batch_size=rows, seq_len=length + args.max_new_tokens, logit_rows=1,
                   vision_images=int(px.shape[0]) * (int(px.shape[1]) if px.ndim == 5 else 1))
    if px.ndim == 3:  # Qwen2.5-VL: one image of P patches per row, at its own resolution
        lengths["vision_tokens"] = int(px.shape[1])
    return {"method": method, "processor": processor, "batch": batch, "lengths": lengths}


def _prepare_diffusion(args, image, cfg) -> dict:
    """Masked-diffusion (LLaDA-V) inputs that need no weights: sampler settings, processor, batch, method, and the lengths of the
    memory estimate."""
    from vtp_jax.processing import load_processor

    processor = load_processor(args.model, cfg, prompt_format=args.prompt_format, **processor_options(args))
    dcfg = diffusion_config(
        cfg, processor, gen_length=args.gen_length, block_length=args.block_length, steps=args.steps,
        remasking=args.remasking, cfg_scale=args.cfg, source=args.model, early_stop=args.early_stop, cache=args.cache,
        threshold=args.threshold, pruned_cache=args.pruned_cache,
        warn=lambda m: print(f"vtp-generate: warning: {m}", file=sys.stderr),
    )
    batch = processor([image], [args.prompt])
    check_positions(cfg, len(batch.prompt_ids[0]), dcfg.gen_length, "--gen-length")
    method = _method(args, cfg.family, batch.num_visual_tokens, cfg.text.num_hidden_layers)
    rows = int(batch.input_ids.shape[0]) * (2 if dcfg.cfg > 0 else 1)  # guidance runs an unconditional copy
    px = batch.pixel_values
    lengths = dict(batch_size=rows, seq_len=int(batch.input_ids.shape[1]) + dcfg.gen_length,
                   logit_rows=dcfg.gen_length, vision_images=int(px.shape[0]) * int(px.shape[1]))
    return {"method": method, "processor": processor, "batch": batch, "dcfg": dcfg, "lengths": lengths}


def _generate(args, model, cfg, prep) -> dict:
    """Builds the family's generator (:func:`vtp_jax.generation.make_generator`), runs ``--warmup`` + ``--runs``
    calls of the shared ``generate(batch, settings)`` and returns the JSON object (diffusion adds its settings)."""
    from vtp_jax.generation import SamplerSettings, make_generator

    processor, batch, dcfg = prep["processor"], prep["batch"], prep.get("dcfg")
    gen = make_generator(model, prep["method"], diffusion=dcfg, mesh=prep.get("mesh"))
    settings = SamplerSettings(
        temperature=args.temperature, seed=args.seed, top_p=args.top_p or 1.0,
        max_new_tokens=args.max_new_tokens or 1, eos_token_ids=eos_token_ids(cfg, processor),
        pad_token_id=processor.pad_token_id,
    )
    runs, first_call_s = _timed_runs(lambda: gen.generate(batch, settings), args)
    result = _result(args, cfg, processor, batch, runs, first_call_s)
    if dcfg is not None:
        result["diffusion"] = jsonable({  # finite by validation; jsonable anyway, so --json can never fail on NaN
            "gen_length": dcfg.gen_length, "block_length": dcfg.block_length, "steps": dcfg.steps,
            "remasking": dcfg.remasking, "cfg": dcfg.cfg, "mask_id": dcfg.mask_id,
            "suppress_ids": list(dcfg.suppress_ids), "stop_ids": list(dcfg.stop_ids),
            "early_stop": dcfg.early_stop, "cache": dcfg.cache, "threshold": dcfg.threshold,
            "pruned_cache": dcfg.pruned_cache, "steps_run": runs[-1].steps,
            "image_size": list(batch.image_inputs["image_size"]), "grid": list(batch.image_inputs["grid"]),
        })
    return result


# Each generator kind's inputs that need no weights (and the memory estimate's lengths); the run is shared.
_PREPARE = {AUTOREGRESSIVE: _prepare_autoregressive, MASKED_DIFFUSION: _prepare_diffusion}


def _method(args, family: str, num_visual: int, num_layers: int):
    import dataclasses

    from vtp_jax.pruning import METHODS

    classes = [METHODS.get(n.strip()) for n in args.method.split("+")]
    seeded = any(cls is not None and "seed" in {f.name for f in dataclasses.fields(cls)} for cls in classes)
    return build_methods(
        args.method, family, num_visual, num_layers, keep=args.keep, keep_ratio=args.keep_ratio,
        layer=args.layer, criterion=args.criterion, reindex=args.reindex, pivot=args.pivot, cls_layer=args.cls_layer,
        seed=args.seed if seeded else None, tau=args.tau, score_step=args.score_step,
        predictor=default_predictor(args.method, args.predictor, args.model),
    )


def jsonable(x):
    """``x`` with every NumPy / JAX array turned into (nested) lists and NumPy scalars into Python numbers, through
    dicts, lists and tuples; non-finite floats become None (JSON has no NaN)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "__array__") and not isinstance(x, (str, bytes)):
        x = np.asarray(x)
        return jsonable(x.tolist()) if x.ndim else jsonable(x.item())
    if isinstance(x, np.generic):
        return jsonable(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _stage_entry(name: str, value, n_new: int):
    """A ``stages`` entry for row 0: arrays [B, …] give their row 0 (DyRate's per-token arrays cut to the ``n_new``
    generated tokens); other values (layer, tau, the rate list) as they are."""
    if not isinstance(value, dict):
        return [int(i) for i in np.asarray(value)[0]]
    out = {}
    for k, x in value.items():
        if isinstance(x, (np.ndarray, np.generic)) or hasattr(x, "shape"):
            x = np.asarray(x)
            x = x[0] if x.ndim else x
            if name == "dyrate" and k in ("kept_per_token", "rate_per_token"):
                x = x[:n_new]
        out[k] = jsonable(x)
    return out


def _first_phase_s(out) -> float:
    """The ``prefill_s`` of the JSON: the autoregressive prefill, or the diffusion encode (seconds)."""
    return out.prefill_s if out.prefill_s is not None else out.encode_s


def _result(args, cfg, processor, batch, runs, first_call_s) -> dict:
    """The ``--json`` object shared by both generator kinds (row 0 of the batch; timings are medians over runs of
    :class:`vtp_jax.generation.output.GenerationOutput`)."""
    out = runs[-1]
    new_ids = out.answer_ids(0)
    dropped = out.stage2_dropped
    kept = [] if dropped is not None and bool(dropped[0]) else [int(i) for i in np.asarray(out.kept[0])]
    n_new = int(out.num_new_tokens[0])
    stages = {name: _stage_entry(name, v, n_new) for name, v in out.stages.items()}
    dyrate = {}
    if out.kept_per_token is not None:  # DyRate: N_v = the visual tokens in the cache after prefill
        dyrate = {"kept_per_token": [int(k) for k in out.kept_per_token[0, :n_new]],
                  "decode_visual_kv_cut": out.decode_visual_kv_cut(int(out.kept_per_token[0, 0]))}
    return jsonable({
        "text": processor.decode(new_ids),
        "prompt_ids": batch.prompt_ids[0],
        "output_ids": new_ids,
        "num_visual_tokens": batch.num_visual_tokens,
        "kept_visual_indices": kept,
        "stages": stages,
        **dyrate,
        "method": args.method,
        "family": cfg.family,
        "timings": {
            "prefill_s": _median([_first_phase_s(r) for r in runs]),
            "decode_s": _median([r.decode_s for r in runs]),
            "tokens_per_s": _median([r.tokens_per_s for r in runs]),
            "latency_s": _median([r.latency_s for r in runs]),
            "runs": len(runs),
            "first_call_s": first_call_s,
        },
    })


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI; returns the exit code (argparse usage errors return 2 instead of raising SystemExit)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # usage error (2) or --help (0); argparse has printed its message
        return int(e.code or 0)
    try:
        result = run(args)
    except ValueError as e:  # InputError, PruningError, CheckpointError, DiffusionError, MemoryCheckError…
        print(f"vtp-generate: error: {e}", file=sys.stderr)
        return 2
    from vtp_jax.sharding import is_primary

    if not is_primary():
        return 0  # several processes: process 0 prints
    if args.json:
        print(json.dumps(result, allow_nan=False))
    else:
        if result["random_weights"]:
            print("[note] this checkpoint has RANDOM weights: the text below is meaningless by design")
        t = {k: float("nan") if v is None else v for k, v in result["timings"].items()}  # null: not finite
        print(result["text"])
        kept = f"[{result['method']}] kept {len(result['kept_visual_indices'])}/{result['num_visual_tokens']} visual tokens"
        if family_record(result["family"]).kind == MASKED_DIFFUSION:
            print(f"{kept} | encode {t['prefill_s'] * 1e3:.1f} ms | denoise {t['decode_s'] * 1e3:.1f} ms | "
                  f"latency {t['latency_s'] * 1e3:.1f} ms | {t['tokens_per_s']:.1f} tokens/s")
        else:
            cut = result.get("decode_visual_kv_cut")
            cut = f" | decode visual KV cut {cut:.1%}" if cut is not None else ""
            print(f"{kept}{cut} | prefill {t['prefill_s'] * 1e3:.1f} ms | decode {t['tokens_per_s']:.1f} tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
