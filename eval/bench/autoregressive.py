"""The autoregressive section of ``vtp-bench`` (LLaVA): :func:`run_llava` builds a random-weight LLaVA-1.5
checkpoint, times transformers and every jax variant, and returns the section's JSON-able report; :func:`llava_row`
and :func:`add_llava_ratios` make its rows, :func:`format_llava` its table (see :mod:`eval.bench` for the variants,
the units and the FLOP model).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any, Callable

from eval.bench.errors import BenchError
from eval.bench.flops import method_prefill_flops, vision_flops
from eval.bench.load import FOREIGN_LOAD_WARN, ForeignLoad, load_before, loadavg, warn_busy
from eval.bench.methods import build_variant_method, selection, variant_specs
from eval.bench.report import (
    RUNS_BUSY_WARNING, UNRELIABLE_MARK, busy_during_runs, cpu_share_line, fmt, fmt_keep, greedy_agreement, median,
    ratio, text_table,
)
from eval.bench.runners import JaxRunner, TorchRunner, jax_environment, make_inputs

# Keys are tiny_llava_config's keyword arguments.
PRESETS: dict[str, dict[str, int]] = {
    # For the smoke test: builds, converts and compiles in seconds.
    "micro": dict(image_size=56, patch_size=14, vision_hidden=32, vision_layers=2, vision_heads=2, vision_mlp=64,
                  text_hidden=64, text_layers=3, text_heads=4, text_kv_heads=4, text_mlp=128, vocab_size=300),
    # Default: "tiny but not trivial" — 256 visual tokens, ~25 M decoder parameters.
    "tiny": dict(image_size=224, patch_size=14, vision_hidden=256, vision_layers=4, vision_heads=4, vision_mlp=1024,
                 text_hidden=512, text_layers=8, text_heads=8, text_kv_heads=8, text_mlp=1376, vocab_size=512),
    # LLaVA-1.5's 336 px / 576 visual tokens with a ~85 M-parameter decoder.
    "small": dict(image_size=336, patch_size=14, vision_hidden=384, vision_layers=6, vision_heads=6, vision_mlp=1536,
                  text_hidden=768, text_layers=12, text_heads=12, text_kv_heads=12, text_mlp=2048, vocab_size=1024),
}

TARGET_DECODE_VS_TORCH = 3.0
TARGET_FASTV25_PREFILL = 1.5


def build_checkpoint(workdir: str, hf_config, log: Callable[[str], None]) -> tuple[str, str, dict]:
    """Writes the random HF checkpoint and converts it → (hf_dir, converted_dir, seconds per step)."""
    from convert import convert
    from vtp_jax.testbed.hf_llava import write_random_llava

    hf_dir, jax_dir = os.path.join(workdir, "hf"), os.path.join(workdir, "converted")
    times = {}
    t0 = time.perf_counter()
    write_random_llava(hf_dir, hf_config, seed=0)
    times["write_hf_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    convert(hf_dir, jax_dir, dtype="float32", progress=False)
    times["convert_s"] = time.perf_counter() - t0
    log(f"checkpoint: wrote random HF LLaVA in {times['write_hf_s']:.1f} s, converted in {times['convert_s']:.1f} s")
    return hf_dir, jax_dir, times


def run_llava(args: argparse.Namespace, log: Callable[[str], None] = print, family: str = "llava") -> dict:
    """Runs the LLaVA section and returns its JSON-able report (see :mod:`eval.bench` for the units: ms, tokens/s,
    FLOPs, seconds). ``family`` (an autoregressive family) picks the pruning methods and builds them; the model is
    the random-weight LLaVA-1.5 testbed (:mod:`vtp_jax.testbed.hf_llava`)."""
    import jax

    from vtp_jax.checkpoint import load
    from vtp_jax.testbed.hf_llava import PAD_ID, tiny_llava_config

    if args.runs < 1 or args.warmup < 0 or args.max_new_tokens < 2 or args.batch < 1:
        raise BenchError("need --runs ≥ 1, --warmup ≥ 0, --max-new-tokens ≥ 2, --batch ≥ 1")
    methods, keep_pcts = selection(args, family)
    load_start, busy_before = load_before()
    model_kwargs = dict(PRESETS[args.preset])
    for key in model_kwargs:
        if getattr(args, key, None) is not None:
            model_kwargs[key] = getattr(args, key)
    n_layers = model_kwargs["text_layers"]
    if not 1 <= args.fastv_layer < n_layers:
        raise BenchError(f"--fastv-layer must be in [1, {n_layers - 1}] for a {n_layers}-layer decoder, "
                         f"got {args.fastv_layer}")
    hf_config = tiny_llava_config(vision_feature_select_strategy="default", **model_kwargs)

    log("-" * 100)
    log("LLaVA (autoregressive): transformers vs vtp_jax, unpruned and every pruning method")
    log("-" * 100)
    warn_busy(busy_before, log)
    report: dict[str, Any] = {"preset": args.preset, "model": model_kwargs}

    with tempfile.TemporaryDirectory(prefix="vtp-bench-") as workdir:
        hf_dir, jax_dir, ck_times = build_checkpoint(workdir, hf_config, log)
        t0 = time.perf_counter()
        model, cfg, _meta = load(jax_dir)
        ck_times["load_s"] = time.perf_counter() - t0
        report["checkpoint"] = ck_times
        n_v = cfg.num_visual_tokens
        inputs = make_inputs(cfg, args.batch)
        prompt_len = inputs["input_ids"].shape[1]
        n = args.max_new_tokens
        if prompt_len + n > cfg.text.max_position_embeddings:
            raise BenchError(f"prompt ({prompt_len}) + --max-new-tokens ({n}) exceeds max positions")
        device = jax.devices()[0]
        report["env"] = jax_environment(load_start, busy_before)
        report["settings"] = {"runs": args.runs, "warmup": args.warmup, "max_new_tokens": n, "batch": args.batch,
                              "prompt_len": prompt_len, "num_visual_tokens": n_v, "fastv_layer": args.fastv_layer,
                              "methods": methods, "keeps_percent": keep_pcts}
        log(f"model: CLIP {cfg.vision.num_hidden_layers}L×{cfg.vision.hidden_size} @ {cfg.vision.image_size}px/"
            f"{cfg.vision.patch_size} → {n_v} visual tokens; Llama {cfg.text.num_hidden_layers}L×"
            f"{cfg.text.hidden_size} ({cfg.text.num_attention_heads} heads, MLP {cfg.text.intermediate_size}, "
            f"vocab {cfg.text.vocab_size})")
        log(f"prompt: {prompt_len} tokens × batch {args.batch}; {n} new tokens per run; "
            f"{args.warmup} warm-up + {args.runs} timed runs per variant")
        log(f"jax {jax.__version__} on {device.platform} ({device.device_kind}), {os.cpu_count()} CPUs")

        # Variants (table-driven): name → runner (torch first when present); method objects by name. The LLM
        # prefill FLOPs come after the runs (ToDRE stage 2's depend on whether it fired).
        specs = variant_specs(methods, keep_pcts)
        objs = {name: build_variant_method(m, family, n_v, cfg.text.num_hidden_layers, pct,
                                           layer=args.fastv_layer if m == "fastv" else None)
                for name, m, pct in specs}
        spec_of = {name: (m, pct) for name, m, pct in specs}
        report["settings"]["variants"] = [name for name, _, _ in specs]
        variants: dict[str, Any] = {name: JaxRunner(model, objs[name], inputs, n, PAD_ID) for name, _, _ in specs}
        log(f"{len(specs)} jax variants: {', '.join(name.removeprefix('jax ') for name, _, _ in specs)}")

        torch_skip = None
        if args.no_torch:
            torch_skip = "--no-torch"
        else:
            try:
                torch_runner = TorchRunner(hf_dir, inputs, n, PAD_ID, args.torch_threads)
                variants = {"torch": torch_runner, **variants}
                report["env"].update(torch_runner.info)
            except ImportError as e:
                torch_skip = f"torch / transformers model unavailable: {e}"
                log(f"WARNING: skipping the PyTorch baseline ({torch_skip})")

        # Warm-up (jax: at least one run, which compiles), then round-robin timed runs.
        for name, runner in variants.items():
            t0 = time.perf_counter()
            for _ in range(max(args.warmup, 1 if isinstance(runner, JaxRunner) else 0)):
                runner.warmup()
            log(f"warm-up {name}: {time.perf_counter() - t0:.1f} s")
        raw: dict[str, list[dict]] = {name: [] for name in variants}
        during = ForeignLoad()
        for r in range(args.runs):
            for name, runner in variants.items():
                raw[name].append(runner.run())
            if not args.quiet:
                log(f"run {r + 1}/{args.runs} done")
        if "torch" in variants:
            raw["torch"] = variants["torch"].finalize(args.batch)
        report["env"]["loadavg_end"] = loadavg()
        report["env"]["foreign_cpu_share_during_runs"] = during.share()
        report["raw_runs"] = raw

    # Aggregate.
    rows: dict[str, dict] = {}
    flops = {"vision_and_projector": vision_flops(cfg, args.batch)}
    for name, runs in raw.items():
        method, pct = spec_of.get(name, (None, None))
        rows[name] = llava_row(runs, obj=objs.get(name), method=method, pct=pct,
                               compile_s=getattr(variants[name], "compile_s", None), cfg=cfg, prompt_len=prompt_len,
                               n=n, batch=args.batch, vision_flops_=flops["vision_and_projector"])
        flops[name] = rows[name]["llm_prefill_flops"]
    add_llava_ratios(rows)
    base = rows["jax none"]
    torch_row = rows.get("torch")

    # Greedy agreement between torch and jax (sanity check that both compute the same model; info only).
    agreement = None
    if torch_row is not None:
        agreement = greedy_agreement(variants["torch"].last_tokens, variants["jax none"].last_tokens)

    decode_x = base["decode_x_torch"]
    f25 = rows.get("jax fastv-25")  # absent when --methods / --keeps leave it out
    fastv25 = None if f25 is None else f25["prefill_speedup_vs_jax_none"]
    decode_x_best = ratio(base["decode_tokens_per_s_max"], torch_row["decode_tokens_per_s_max"]) if torch_row else None
    fastv25_best = None if f25 is None else ratio(base["prefill_ms_min"], f25["prefill_ms_min"])
    report["rows"] = rows
    report["flops"] = {"vision_and_projector": flops["vision_and_projector"],
                       **{name: rows[name]["llm_prefill_flops"] for name in rows}}
    report["torch_skipped"] = torch_skip
    report["torch_jax_greedy_agreement_tokens"] = agreement
    foreign = report["env"].get("foreign_cpu_share_during_runs")
    reliable = foreign is None or foreign <= FOREIGN_LOAD_WARN
    report["targets"] = {
        "reliable": reliable,
        "decode_jax_over_torch": {"value": decode_x, "value_best_of_runs": decode_x_best,
                                  "target": TARGET_DECODE_VS_TORCH,
                                  "status": "SKIPPED" if decode_x is None else
                                  ("PASS" if decode_x >= TARGET_DECODE_VS_TORCH else "MISS")},
        "fastv25_prefill_speedup": {"value": fastv25, "value_best_of_runs": fastv25_best,
                                    "target": TARGET_FASTV25_PREFILL,
                                    "llm_flop_ratio": None if f25 is None else f25["llm_flop_ratio_vs_jax_none"],
                                    "prefill_flop_ratio": (None if f25 is None
                                                           else f25["prefill_flop_ratio_vs_jax_none"]),
                                    "status": "SKIPPED" if fastv25 is None else
                                    ("PASS" if fastv25 >= TARGET_FASTV25_PREFILL else "MISS")},
    }
    return report


def llava_row(runs: list[dict], *, obj, method: str | None, pct: float | None, compile_s: float | None, cfg,
              prompt_len: int, n: int, batch: int, vision_flops_: int, num_visual: int | None = None) -> dict:
    """One LLaVA table row from a variant's timed runs (each ``{"prefill_s", "decode_s", "tokens_per_s", ...}``,
    seconds / tokens per second): medians and bests in ms and tokens/s, kept tokens, analytic FLOPs (ToDRE stage 2's
    depend on whether it fired in every run). ``num_visual``: the prompt's N_v (default ``cfg.num_visual_tokens``;
    LLaVA-NeXT: the image's layout). ``e2e_ms``: median wall time of one whole generation (torch: its ``generate``
    call, ``generate_s``; jax: prefill + decode). Ratios come from :func:`add_llava_ratios`."""
    n_v = cfg.num_visual_tokens if num_visual is None else num_visual
    stage2 = None
    if obj is not None and obj.name == "todre-relevance":
        dropped = [all(x["stage2_dropped"]) for x in runs]
        fired = all(dropped)
        stage2 = {"fired": fired, "fired_runs": sum(dropped), "runs": len(runs),
                  "layer": obj.resolve_layer(cfg.text.num_hidden_layers), "tau": obj.tau,
                  "alpha_t2v": runs[-1]["alpha_t2v"], "alpha_v2t": runs[-1]["alpha_v2t"]}
        keep = 0 if fired else None  # visual tokens in layers ≥ ℓ
    else:
        fired, keep = False, getattr(obj, "keep", None)
    llm_flops = method_prefill_flops(cfg, prompt_len, obj, fired=fired, batch=batch, num_visual=n_v)
    e2e = [x["generate_s"] if "generate_s" in x else x["prefill_s"] + x["decode_s"] for x in runs]
    return {
        "method": "none" if method is None else method,
        "stage": None if obj is None else obj.stage,
        "keep_percent": 100.0 if method is None else pct,
        "prefill_ms": 1e3 * median([x["prefill_s"] for x in runs]),
        "decode_tokens_per_s": median([x["tokens_per_s"] for x in runs]),
        "decode_ms_per_step": 1e3 * median([x["decode_s"] for x in runs]) / (n - 1),
        "e2e_ms": 1e3 * median(e2e),
        "e2e_ms_runs": [1e3 * t for t in e2e],
        "prefill_ms_min": 1e3 * min(x["prefill_s"] for x in runs),
        "decode_tokens_per_s_max": max(x["tokens_per_s"] for x in runs),
        "prefill_ms_runs": [1e3 * x["prefill_s"] for x in runs],
        "decode_tokens_per_s_runs": [x["tokens_per_s"] for x in runs],
        "visual_tokens_kept": n_v if keep is None else keep,
        "llm_tokens_after_pruning": prompt_len if keep is None else prompt_len - n_v + keep,
        "llm_prefill_flops": llm_flops,
        "prefill_flops": llm_flops + vision_flops_,
        "compile_s": compile_s,
        "stage2": stage2,
    }


def add_llava_ratios(rows: dict[str, dict]) -> None:
    """Adds to every row: prefill speed-up over ``jax none``, decode × ``torch`` (None without a torch row), FLOP
    ratios jax none / variant."""
    base = rows["jax none"]
    torch_row = rows.get("torch")
    for row in rows.values():
        row["prefill_speedup_vs_jax_none"] = ratio(base["prefill_ms"], row["prefill_ms"])
        if "e2e_ms" in base and "e2e_ms" in row:
            row["e2e_speedup_vs_jax_none"] = ratio(base["e2e_ms"], row["e2e_ms"])
        row["decode_x_torch"] = (ratio(row["decode_tokens_per_s"], torch_row["decode_tokens_per_s"])
                                 if torch_row else None)
        row["llm_flop_ratio_vs_jax_none"] = ratio(base["llm_prefill_flops"], row["llm_prefill_flops"])
        row["prefill_flop_ratio_vs_jax_none"] = ratio(base["prefill_flops"], row["prefill_flops"])


def stage2_note(stage2: dict | None) -> str:
    """todre-relevance: whether it fired (dropped every visual token from layer ℓ on) and its ratios (first row)."""
    if not stage2:
        return ""
    a_tv = stage2["alpha_t2v"][0] if stage2["alpha_t2v"] else float("nan")
    a_vt = stage2["alpha_v2t"][0] if stage2["alpha_v2t"] else float("nan")
    what = ("FIRED" if stage2["fired"] else "did not fire" if not stage2["fired_runs"]
            else f"fired in {stage2['fired_runs']} of {stage2['runs']} runs")
    return f"{what} at ℓ={stage2['layer']} (α_t→v {a_tv:.3f}, α_v→t {a_vt:.3f}; τ {stage2['tau']:.2f})"


def format_llava(report: dict) -> str:
    """The LLaVA section's table and target lines."""
    rows, env, s = report["rows"], report["env"], report["settings"]
    lines = ["", "LLaVA — autoregressive generation, every pruning method (transformers vs vtp_jax)", "=" * 100,
             f"jax {env['jax_version']} · device {env['platform']} ({env['device_kind']}) · {env['cpu_count']} CPUs"
             + (f" · torch {env['torch_version']} ({env['torch_num_threads']} threads)"
                if "torch_version" in env else ""),
             f"prompt {s['prompt_len']} tokens ({s['num_visual_tokens']} visual) × batch {s['batch']}, "
             f"{s['max_new_tokens']} new tokens, medians of {s['runs']} runs, FastV K = {s['fastv_layer']}",
             cpu_share_line(env),
             ""]
    if busy_during_runs(env):
        lines[-1:-1] = [RUNS_BUSY_WARNING]
    cols = [("variant", 22, "<"), ("method", 16, "<"), ("keep %", 7, ">"), ("kept", 6, ">"), ("LLM T", 7, ">"),
            ("prefill ms", 12, ">"), ("best ms", 9, ">"), ("decode tok/s", 13, ">"), ("best tok/s", 11, ">"),
            ("prefill ×", 10, ">"), ("dec ×torch", 11, ">"), ("LLM GFLOP", 10, ">"), ("FLOP ×", 8, ">"),
            ("compile s", 10, ">"), ("note", 0, "<")]
    table = []
    for name, r in rows.items():
        table.append([name, "torch" if name == "torch" else r["method"], fmt_keep(r["keep_percent"]),
                      r["visual_tokens_kept"], r["llm_tokens_after_pruning"], f"{r['prefill_ms']:.1f}",
                      f"{r['prefill_ms_min']:.1f}", f"{r['decode_tokens_per_s']:.1f}",
                      f"{r['decode_tokens_per_s_max']:.1f}", fmt(r["prefill_speedup_vs_jax_none"], ".2f", "×"),
                      fmt(r["decode_x_torch"], ".2f", "×"), f"{r['llm_prefill_flops'] / 1e9:.3f}",
                      fmt(r["llm_flop_ratio_vs_jax_none"], ".2f", "×"), fmt(r["compile_s"], ".1f"),
                      stage2_note(r.get("stage2"))])
    lines += text_table(cols, table)
    lines.append(f"(keep % = --keeps share of the {s['num_visual_tokens']} visual tokens, kept = visual tokens left "
                 f"(FastV: from layer K on; todre-relevance: in layers ≥ ℓ); LLM T = tokens of the pruned decoder "
                 f"layers; best = fastest / highest of the runs (least disturbed by other processes); prefill × = "
                 f"speed-up over jax none; FLOP × = LLM prefill FLOP ratio jax none / variant; vision + projector add "
                 f"{report['flops']['vision_and_projector'] / 1e9:.3f} GFLOP to every prefill)")
    if report["torch_skipped"]:
        lines.append(f"torch baseline skipped: {report['torch_skipped']}")
    elif report["torch_jax_greedy_agreement_tokens"] is not None:
        lines.append(f"greedy tokens torch vs jax none: first {report['torch_jax_greedy_agreement_tokens']} of "
                     f"{s['max_new_tokens']} identical (sanity check)")
    t = report["targets"]
    d, f = t["decode_jax_over_torch"], t["fastv25_prefill_speedup"]
    mark = "" if t["reliable"] else UNRELIABLE_MARK
    lines += ["",
              f"decode tokens/s jax / torch:          {fmt(d['value'], '.2f', '×'):>8}  "
              f"(target ≥ {d['target']}×)  "
              f"{d['status']}{mark if d['status'] != 'SKIPPED' else ''}   [best of runs: {fmt(d['value_best_of_runs'], '.2f', '×')}]",
              f"FastV keep 25% prefill speed-up:      {fmt(f['value'], '.2f', '×'):>8}  "
              f"(target ≥ {f['target']}×)  "
              f"{f['status']}{mark if f['status'] != 'SKIPPED' else ''}   [best of runs: "
              f"{fmt(f['value_best_of_runs'], '.2f', '×')}; FLOP ratio: LLM {fmt(f['llm_flop_ratio'], '.2f', '×')}, "
              f"whole prefill {fmt(f['prefill_flop_ratio'], '.2f', '×')}]",
              ""]
    return "\n".join(lines)
