"""``vtp-generate``: jit-compiled generation from a converted checkpoint, with or without visual token pruning.

Exit codes: 0 on success, 2 on bad input (message on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vtp-generate", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="converted checkpoint directory (from vtp-convert)")
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--prompt", required=True, help="question / instruction text")
    p.add_argument("--method", default="none", help="pruning method: none | fastv")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--keep", type=int, help="visual tokens to keep (count)")
    g.add_argument("--keep-ratio", type=float, help="visual tokens to keep (fraction of N_v)")
    p.add_argument("--layer", type=int, default=None, help="FastV: decoder layer K at which to prune (default 2)")
    p.add_argument("--criterion", default=None, choices=["last", "all"], help="FastV scoring rows (default last)")
    p.add_argument("--reindex", action="store_true", help="renumber positions of kept tokens contiguously")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first, so timings exclude compilation")
    p.add_argument("--runs", type=int, default=1, help="timed runs; timings are their medians")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")
    return p


def run(args: argparse.Namespace) -> dict:
    """Loads, processes, generates; returns the JSON-able result. Raises ValueError subclasses on bad input."""
    from vtp_jax.checkpoint import load
    from vtp_jax.generation.autoregressive import AutoregressiveGenerator
    from vtp_jax.processing import InputError, Processor, load_image
    from vtp_jax.pruning import make_method, resolve_keep

    if args.max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be ≥ 1, got {args.max_new_tokens}")
    if not 0.0 < args.top_p <= 1.0:
        raise InputError(f"--top-p must be in (0, 1], got {args.top_p}")
    image = load_image(args.image)
    model, cfg, meta = load(args.model)
    n_v = cfg.num_visual_tokens
    method = None
    if args.method != "none":
        ratio = 0.5 if args.keep is None and args.keep_ratio is None else args.keep_ratio  # FastV R = 50% default
        keep = resolve_keep(n_v, args.keep, ratio)
        method = make_method(args.method, keep=keep, layer=args.layer, criterion=args.criterion, reindex=args.reindex or None)
    elif args.keep is not None or args.keep_ratio is not None:
        raise InputError("--keep / --keep-ratio need a pruning --method")
    processor = Processor(args.model, image_token_id=cfg.image_token_id, num_visual_tokens=n_v)
    batch = processor([image], [args.prompt])
    needed = batch.input_ids.shape[1] + args.max_new_tokens
    if needed > cfg.text.max_position_embeddings:
        raise InputError(
            f"prompt ({len(batch.prompt_ids[0])} tokens, padded to {batch.input_ids.shape[1]}) plus "
            f"--max-new-tokens {args.max_new_tokens} exceeds the model's {cfg.text.max_position_embeddings} positions"
        )
    gen = AutoregressiveGenerator(model, method)
    eos = tuple(cfg.text.eos_token_id) or ((processor.tokenizer.eos_token_id,) if processor.tokenizer.eos_token_id is not None else ())
    kwargs = dict(
        max_new_tokens=args.max_new_tokens, eos_token_ids=eos, pad_token_id=processor.pad_token_id,
        temperature=args.temperature, top_p=args.top_p, seed=args.seed,
    )
    first_call_s = None
    for _ in range(max(args.warmup, 0)):
        warm = gen.generate(batch.input_ids, batch.attention_mask, batch.pixel_values, **kwargs)
        first_call_s = first_call_s if first_call_s is not None else warm.prefill_s + warm.decode_s
    runs = [gen.generate(batch.input_ids, batch.attention_mask, batch.pixel_values, **kwargs) for _ in range(max(args.runs, 1))]
    out = runs[-1]
    median = lambda xs: float(np.median(xs))
    new_ids = [int(t) for t in out.tokens[0][: out.num_new_tokens[0]]]
    return {
        "text": processor.decode(new_ids),
        "prompt_ids": batch.prompt_ids[0],
        "output_ids": new_ids,
        "num_visual_tokens": n_v,
        "kept_visual_indices": [int(i) for i in np.asarray(out.kept[0])],
        "method": args.method,
        "family": cfg.family,
        "random_weights": bool(meta.get("random_weights", False)),
        "timings": {
            "prefill_s": median([r.prefill_s for r in runs]),
            "decode_s": median([r.decode_s for r in runs]),
            "tokens_per_s": median([r.tokens_per_s for r in runs]),
            "runs": len(runs),
            "first_call_s": first_call_s,
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = run(args)
    except ValueError as e:  # InputError, PruningError, CheckpointError, ConfigError are all ValueErrors
        print(f"vtp-generate: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        if result["random_weights"]:
            print("[note] this checkpoint has RANDOM weights: the text below is meaningless by design")
        t = result["timings"]
        print(result["text"])
        print(
            f"[{result['method']}] kept {len(result['kept_visual_indices'])}/{result['num_visual_tokens']} visual tokens | "
            f"prefill {t['prefill_s'] * 1e3:.1f} ms | decode {t['tokens_per_s']:.1f} tokens/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
