"""The masked-diffusion section of ``vtp-bench`` (LLaDA-V, RedVTP's settings): :func:`run_llada_v` builds the
PyTorch reference and a LLaDA-V checkpoint of the same random weights, times LLaDA's loop and every jax variant at
each setting of :data:`LLADA_V_SETTINGS`, and returns the section's JSON-able report; :func:`llada_row` and
:func:`add_llada_ratios` make its rows, :func:`format_llada_v` its table (see :mod:`eval.bench` for the variants, the
units and the FLOP model).
"""

from __future__ import annotations

import dataclasses

import argparse
import os
import tempfile
import time
from typing import Any, Callable

from eval.bench.errors import BenchError
from eval.bench.flops import diffusion_flops, llada_vision_flops
from eval.bench.load import FOREIGN_LOAD_WARN, ForeignLoad, load_before, loadavg, warn_busy
from eval.bench.methods import build_variant_method, selection, variant_name, variant_specs
from eval.bench.report import (
    RUNS_BUSY_WARNING, UNRELIABLE_MARK, busy_during_runs, cpu_share_line, fmt, fmt_gain, fmt_keep, greedy_agreement,
    median, ratio, text_table,
)
from eval.bench.runners import JaxDiffusionRunner, TorchDiffusionRunner, jax_environment, make_llada_inputs

# Keys are tiny_llada_v_config's keyword arguments; "image" is the (height, width) of the benchmark image, which picks
# the anyres grid and so N_v.
LLADA_V_PRESETS: dict[str, dict[str, Any]] = {
    # For the smoke test: 32 px tiles / patch 8 → 16 features per tile, 2×2 grid; 2 × 64 decoder.
    "micro": dict(image_size=32, patch_size=8, vision_hidden=32, vision_layers=2, vision_heads=4, vision_mlp=64,
                  text_hidden=64, text_layers=2, text_heads=4, text_kv_heads=4, text_mlp=128, vocab_size=320,
                  max_position_embeddings=512, max_grid=2, max_num_patches=4, image=(50, 90)),
    # Default (= the demo's part B on its photograph's size): SigLIP-style 4 × 192 on 96 px tiles / patch 8 → 144
    # features per tile; a 300 × 451 image picks the 2×2 grid → 144 + 16·(24 + 1) = 544 visual tokens, ~92 % of the
    # sequence; LLaDA decoder 6 layers × 320 hidden (5 heads, MLP 864, vocab 512).
    "tiny": dict(image_size=96, patch_size=8, vision_hidden=192, vision_layers=4, vision_heads=4, vision_mlp=768,
                 text_hidden=320, text_layers=6, text_heads=5, text_kv_heads=5, text_mlp=864, vocab_size=512,
                 max_position_embeddings=1024, max_grid=2, max_num_patches=4, image=(300, 451)),
    # Larger: 128 px tiles / patch 8 → 256 features per tile, ~950 visual tokens; decoder 8 layers × 512.
    "small": dict(image_size=128, patch_size=8, vision_hidden=256, vision_layers=6, vision_heads=4, vision_mlp=1024,
                  text_hidden=512, text_layers=8, text_heads=8, text_kv_heads=8, text_mlp=1376, vocab_size=1024,
                  max_position_embeddings=2048, max_grid=2, max_num_patches=4, image=(400, 602)),
}
# RedVTP's evaluation settings: (gen_length, steps, block_length).
LLADA_V_SETTINGS = ((32, 16, 32), (2, 2, 2))
# The 2/2 setting times only these (method, keep %) besides torch and jax none (to bound the run time); the 32/16
# setting times --llada-methods × --keeps. Keep = max(1, int(N_v · ratio)) as in RedVTP's code.
SHORT_SETTING_VARIANTS = (("redvtp", 50.0), ("redvtp", 25.0))
TARGET_REDVTP50_GAIN = 1.0  # token-throughput gain of RedVTP keep 50 % over jax none at 32/16: ≥ +100 %
BREAKDOWN_RUNS = 3  # extra runs per jax variant (in the first timed rounds) that time encode / first step / the rest


def parse_llada_settings(text: str | None) -> tuple[tuple[int, int, int], ...]:
    """``--llada-settings "32/16/32,128/128/32"`` (gen_length/steps/block_length each) → ((32, 16, 32), …); None
    → :data:`LLADA_V_SETTINGS`. The first setting times every method, the others jax none and
    :data:`SHORT_SETTING_VARIANTS`. Raises BenchError (lengths < 1, a block that does not divide the gen length,
    steps not divisible by the number of blocks, one name twice)."""
    if text is None:
        return LLADA_V_SETTINGS
    out = []
    for item in (x.strip() for x in text.split(",")):
        try:
            g, st, bl = (int(v) for v in item.split("/"))
        except ValueError:
            raise BenchError(f"--llada-settings: {item!r} is not gen_length/steps/block_length (e.g. 32/16/32)"
                             ) from None
        if min(g, st, bl) < 1 or g % bl or st % (g // bl):
            raise BenchError(f"--llada-settings: {item!r}: lengths ≥ 1, the block dividing the gen length and the "
                             "steps divisible by the number of blocks")
        out.append((g, st, bl))
    if not out or len({setting_name(*x) for x in out}) != len(out):
        raise BenchError(f"--llada-settings {text!r}: give distinct gen_length/steps pairs")
    return tuple(out)


def parse_cache_variants(text: str | None) -> list[tuple[str, str, float | None]]:
    """``--diffusion-cache "prefix,dual,dual@0.9,none@0.9"`` → [(label, cache mode, threshold τ or None), …]; the
    exact loop (``none`` without τ) is always timed and is not listed. Labels: ``prefix``, ``dual τ0.9``, ``τ0.9``.
    Raises BenchError for an unknown mode or a τ outside (0, 1]."""
    from vtp_jax.generation.diffusion import CACHE_MODES

    out = []
    for item in (x.strip() for x in str(text or "none").split(",")):
        if not item or item == "none":
            continue
        mode, _, tau = item.partition("@")
        if mode not in CACHE_MODES:
            raise BenchError(f"--diffusion-cache: unknown mode {mode!r} in {item!r} ({', '.join(CACHE_MODES)}, "
                             "optionally @τ)")
        threshold = None
        if tau:
            try:
                threshold = float(tau)
            except ValueError:
                threshold = -1.0
            if not 0.0 < threshold <= 1.0:
                raise BenchError(f"--diffusion-cache: the threshold in {item!r} must be a number in (0, 1]")
        label = " ".join(x for x in (None if mode == "none" else mode,
                                     None if threshold is None else f"τ{threshold:g}") if x)
        out.append((label, mode, threshold))
    return out


# Issue 19's Fast-dLLM targets: (variant, speed-up over the exact unpruned loop "jax none", which settings) — any
# setting for the caching rows, gen_length 128 with block 32 for the combined one.
FAST_DLLM_TARGETS = (("jax none [prefix]", 5.0, None), ("jax redvtp-50 [prefix]", 6.0, None),
                     ("jax redvtp-50 [dual τ0.9]", 10.0, (128, 32)))


def fast_dllm_targets(sections: dict[str, dict]) -> list[dict]:
    """PASS / MISS of :data:`FAST_DLLM_TARGETS` for every section (``{"gen_length", "block_length", "rows"}``) that
    holds the variant: ``[{"setting", "variant", "speedup", "target", "status"}]`` (speed-up = tokens/s over
    ``jax none``, medians)."""
    out = []
    for sname, sec in sections.items():
        for variant, target, where in FAST_DLLM_TARGETS:
            row = sec["rows"].get(variant)
            if row is None or (where is not None and (sec["gen_length"], sec.get("block_length")) != where):
                continue
            gain = row.get("throughput_gain_vs_jax_none")
            speedup = None if gain is None else 1.0 + gain
            out.append({"setting": sname, "variant": variant, "speedup": speedup, "target": target,
                        "status": "SKIPPED" if speedup is None else ("PASS" if speedup >= target else "MISS")})
    return out


def format_fast_dllm_targets(targets: list[dict]) -> list[str]:
    """One line per Fast-dLLM target (:func:`fast_dllm_targets`)."""
    return [f"{t['setting']} {t['variant']}: {fmt(t['speedup'], '.2f', '×')} over jax none (target ≥ "
            f"{t['target']:g}×)  {t['status']}" for t in targets]


def setting_name(gen_length: int, steps: int, block_length: int) -> str:
    """A diffusion setting's name in the report: ``"<gen_length>/<steps>"`` (e.g. ``"32/16"``)."""
    return f"{gen_length}/{steps}"


def run_llada_v(args: argparse.Namespace, log: Callable[[str], None] = print, family: str = "llada_v") -> dict:
    """Runs the LLaDA-V section and returns its JSON-able report (see :mod:`eval.bench` for the units: ms, tokens/s,
    FLOPs, seconds). ``family`` (a masked-diffusion family) picks the pruning methods and builds them; the model is
    the random-weight LLaDA-V testbed (:mod:`vtp_jax.testbed.torch_llada_v` / :mod:`vtp_jax.testbed.hf_llada_v`)."""
    cache_variants = parse_cache_variants(getattr(args, "diffusion_cache", None))  # checked before any work
    settings = parse_llada_settings(getattr(args, "llada_settings", None))
    from convert import convert
    from vtp_jax.checkpoint import load
    from vtp_jax.generation.diffusion import DiffusionConfig
    from vtp_jax.testbed.hf_llada_v import SUPPRESS_IDS, tiny_llada_v_config

    if args.runs < 1 or args.warmup < 0:
        raise BenchError("need --runs ≥ 1, --warmup ≥ 0")
    methods, keep_pcts = selection(args, family)
    load_start, busy_before = load_before()
    preset = dict(LLADA_V_PRESETS[args.preset])
    image_hw = tuple(preset.pop("image"))
    hf_config = tiny_llada_v_config(**preset)

    log("-" * 100)
    log("LLaDA-V (masked diffusion): PyTorch reference (LLaDA's loop) vs vtp_jax, unpruned and every pruning method")
    log("-" * 100)
    warn_busy(busy_before, log)
    report: dict[str, Any] = {"preset": args.preset, "model": preset, "image_size": list(image_hw)}

    torch_skip, ref = None, None
    if args.no_torch:
        torch_skip = "--no-torch"
    else:
        try:
            import torch

            from vtp_jax.testbed.torch_llada_v import Reference
        except ImportError as e:
            torch_skip = f"torch / transformers unavailable: {e}"
            log(f"WARNING: skipping the PyTorch reference ({torch_skip})")
        else:
            if args.torch_threads is not None:
                torch.set_num_threads(args.torch_threads)
            ref = Reference(hf_config, seed=0, attn_implementation=args.torch_attn)

    with tempfile.TemporaryDirectory(prefix="vtp-bench-llada-") as workdir:
        hf_dir, jax_dir = os.path.join(workdir, "hf"), os.path.join(workdir, "converted")
        times = {}
        t0 = time.perf_counter()
        if ref is not None:  # the reference's own weights: both sides run the same model
            from vtp_jax.testbed.torch_llada_v import write_reference_checkpoint

            write_reference_checkpoint(ref, hf_dir)
            weights = "the PyTorch reference's random weights (torch seed 0), exported under LLaDA-V names"
        else:
            from vtp_jax.testbed.hf_llada_v import write_random_llada_v

            write_random_llada_v(hf_dir, hf_config, seed=0)
            weights = "random numpy weights (build_tiny_llada_v)"
        times["write_hf_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        convert(hf_dir, jax_dir, dtype="float32", progress=False)
        times["convert_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        model, cfg, _meta = load(jax_dir)
        times["load_s"] = time.perf_counter() - t0
        log(f"checkpoint: wrote {weights} in {times['write_hf_s']:.1f} s, converted in {times['convert_s']:.1f} s, "
            f"loaded in {times['load_s']:.1f} s")
    report["checkpoint"] = {**times, "weights": weights}

    inputs = make_llada_inputs(model, image_hw)
    n_v, prompt_len, n_tiles = inputs["num_visual"], inputs["input_ids"].shape[1], inputs["num_tiles"]
    max_gen = max(g for g, _, _ in settings)
    if prompt_len + max_gen > cfg.text.max_position_embeddings:
        raise BenchError(f"prompt ({prompt_len}) + gen_length ({max_gen}) exceeds max positions")
    n_layers = cfg.text.num_hidden_layers
    # Variants per setting: (name, method name, keep %); the method objects and keep counts by variant name.
    specs_by_setting = {
        setting_name(*settings[0]): variant_specs(methods, keep_pcts),
        **{setting_name(*st): [("jax none", None, None)] + [(variant_name(m, k), m, k)
                                                             for m, k in SHORT_SETTING_VARIANTS]
           for st in settings[1:]},
    }
    method_objs: dict[str, Any] = {}
    spec_of: dict[str, tuple[str | None, float | None]] = {}
    for specs in specs_by_setting.values():
        for name, m, pct in specs:
            if name not in method_objs:
                method_objs[name] = build_variant_method(m, family, n_v, n_layers, pct)
                spec_of[name] = (m, pct)
    keeps: dict[str, int | None] = {name: getattr(obj, "keep", None) for name, obj in method_objs.items()}
    report["env"] = jax_environment(load_start, busy_before)
    if ref is not None:
        report["env"].update({"torch_version": torch.__version__, "torch_num_threads": torch.get_num_threads(),
                              "torch_attn_implementation": args.torch_attn})
    v, t = cfg.vision, cfg.text
    report["settings"] = {
        "runs": args.runs, "warmup": args.warmup, "batch": 1, "prompt_len": prompt_len, "num_visual_tokens": n_v,
        "num_tiles": n_tiles, "grid": list(inputs["grid"]), "tokens_per_tile": cfg.tokens_per_tile,
        "visual_fraction": {setting_name(*s): n_v / (prompt_len + s[0]) for s in settings},
        "diffusion": [{"gen_length": g, "steps": st, "block_length": bl, "remasking": "low_confidence",
                       "temperature": 0.0} for g, st, bl in settings],
        "keep": {name: (n_v if k is None else k) for name, k in keeps.items()},
        "methods": methods, "keeps_percent": keep_pcts,
        "variants": {sname: [name for name, _, _ in specs] for sname, specs in specs_by_setting.items()},
    }
    log(f"model: SigLIP {v.num_hidden_layers}L×{v.hidden_size} @ {v.image_size}px/{v.patch_size} "
        f"({cfg.tokens_per_tile} features per tile); image {image_hw[0]}×{image_hw[1]} → grid "
        f"{inputs['grid'][0]}×{inputs['grid'][1]} + base tile → {n_v} visual tokens; LLaDA {t.num_hidden_layers}L×"
        f"{t.hidden_size} ({t.num_attention_heads} heads, MLP {t.intermediate_size}, vocab {t.vocab_size})")
    log(f"prompt: {prompt_len} tokens ({n_v} visual), batch 1; settings gen_length/steps "
        + ", ".join(f"{g}/{st} (block {bl})" for g, st, bl in settings)
        + f"; {args.warmup} warm-up + {args.runs} timed runs per variant")

    report["settings"]["diffusion_cache"] = [label for label, _, _ in cache_variants]
    # Runners per setting: torch first when present.
    runners: dict[str, dict[str, Any]] = {}
    dcfgs = {}
    for g, st, bl in settings:
        sname = setting_name(g, st, bl)
        dcfg = DiffusionConfig(gen_length=g, block_length=bl, steps=st, mask_id=int(cfg.mask_token_id),
                               suppress_ids=tuple(i for i in SUPPRESS_IDS if i != cfg.mask_token_id))
        dcfgs[sname] = dcfg
        runners[sname] = {}
        if ref is not None:
            runners[sname]["torch"] = TorchDiffusionRunner(ref, dcfg, inputs)
        for name, _, _ in specs_by_setting[sname]:
            runners[sname][name] = JaxDiffusionRunner(model, dcfg, method_objs[name], inputs)
        for label, mode, tau in cache_variants:  # the same variants with Fast-dLLM's caching / parallel decoding
            for name, _, _ in specs_by_setting[sname]:
                cname = f"{name} [{label}]"
                method_objs[cname], spec_of[cname], keeps[cname] = method_objs[name], spec_of[name], keeps[name]
                runners[sname][cname] = JaxDiffusionRunner(model, dataclasses.replace(dcfg, cache=mode,
                                                                                      threshold=tau),
                                                           method_objs[name], inputs)

    for sname, variants in runners.items():
        for name, runner in variants.items():
            t0 = time.perf_counter()
            for _ in range(max(args.warmup, 1 if isinstance(runner, JaxDiffusionRunner) else 0)):
                runner.warmup()
            log(f"warm-up {sname} {name}: {time.perf_counter() - t0:.1f} s")
    raw: dict[str, dict[str, list[dict]]] = {s: {n: [] for n in v} for s, v in runners.items()}
    split_raw: dict[str, dict[str, list[dict]]] = {
        s: {n: [] for n, r in v.items() if isinstance(r, JaxDiffusionRunner)} for s, v in runners.items()}
    during = ForeignLoad()
    for r in range(args.runs):
        for sname, variants in runners.items():
            for name, runner in variants.items():
                raw[sname][name].append(runner.run())
        if r < BREAKDOWN_RUNS:  # the time split: extra runs in the same rounds (same load window), not reported above
            for sname, variants in runners.items():
                for name in split_raw[sname]:
                    split_raw[sname][name].append(variants[name].breakdown())
        if not args.quiet:
            log(f"run {r + 1}/{args.runs} done")
    foreign_runs = during.share()
    breakdown: dict[str, dict[str, dict]] = {}
    for sname, per_variant in split_raw.items():
        steps = dcfgs[sname].steps
        breakdown[sname] = {}
        for name, parts in per_variant.items():
            later = 1e3 * median([p["later_steps_s"] for p in parts])
            breakdown[sname][name] = {
                "encode_ms": 1e3 * median([p["encode_s"] for p in parts]),
                "first_step_ms": 1e3 * median([p["first_step_s"] for p in parts]),
                "later_steps_ms": later,
                "later_step_ms_each": later / (steps - 1) if steps > 1 else None,
                "runs": len(parts),
            }
    report["env"]["loadavg_end"] = loadavg()
    report["env"]["foreign_cpu_share_during_runs"] = foreign_runs
    report["raw_runs"] = raw
    report["time_split_ms"] = breakdown

    # Aggregate per setting.
    sections: dict[str, dict] = {}
    flops_vision = llada_vision_flops(cfg, n_tiles)
    for (g, st, bl), (sname, variants) in zip(settings, runners.items()):
        rows: dict[str, dict] = {}
        for name, runs in raw[sname].items():
            method, pct = spec_of.get(name, (None, None))
            rows[name] = llada_row(runs, name=name, obj=method_objs.get(name), method=method, pct=pct,
                                   keep=keeps.get(name), compile_s=getattr(variants[name], "compile_s", None), cfg=cfg,
                                   prompt_len=prompt_len, n_v=n_v, n_tiles=n_tiles, gen_length=g, steps=st)
        add_llada_ratios(rows)
        torch_row = rows.get("torch")
        agree = greedy_agreement(variants["torch"].last_tokens, variants["jax none"].last_tokens) if torch_row else None
        sections[sname] = {
            "gen_length": g, "steps": st, "block_length": bl, "rows": rows,
            "flops": {"vision_and_projector": flops_vision, **{n: r["flops"] for n, r in rows.items()}},
            "torch_jax_greedy_agreement_tokens": agree,
            "torch_jax_agree": None if agree is None else agree == g,
            "torch_tokens": None if not torch_row else variants["torch"].last_tokens[0].tolist(),
            "jax_tokens": variants["jax none"].last_tokens[0].tolist(),
        }
    report["sections"] = sections
    report["torch_skipped"] = torch_skip
    first = setting_name(*settings[0])
    main_rows = sections[first]["rows"]
    r50 = main_rows.get("jax redvtp-50")  # absent when --llada-methods / --keeps leave it out
    reliable = foreign_runs is None or foreign_runs <= FOREIGN_LOAD_WARN
    gain = None if r50 is None else r50["throughput_gain_vs_jax_none"]
    report["targets"] = {
        "reliable": reliable,
        "redvtp50_throughput_gain": {
            "setting": first, "value": gain,
            "value_best_of_runs": None if r50 is None else r50["throughput_gain_vs_jax_none_best_of_runs"],
            "target": TARGET_REDVTP50_GAIN, "flop_ratio": None if r50 is None else r50["flop_ratio_vs_jax_none"],
            "status": "SKIPPED" if gain is None else ("PASS" if gain >= TARGET_REDVTP50_GAIN else "MISS"),
        },
        "torch_jax_agree": sections[first]["torch_jax_agree"],
        "fast_dllm": fast_dllm_targets(sections),
    }
    return report


def llada_row(runs: list[dict], *, name: str, obj, method: str | None, pct: float | None, keep: int | None,
              compile_s: float | None, cfg, prompt_len: int, n_v: int, n_tiles: int, gen_length: int,
              steps: int) -> dict:
    """One LLaDA-V table row from a variant's timed runs (each ``{"latency_s", "tokens_per_s", ...}``, seconds):
    latency medians / bests in ms, tokens/s = gen_length / latency, analytic FLOPs (``name == "torch"``: what the
    PyTorch loop computes). Ratios come from :func:`add_llada_ratios`."""
    g = gen_length
    lat = [x["latency_s"] for x in runs]
    # a Fast-dLLM variant ("<variant> [prefix]", "[dual τ0.9]"): the analytic FLOP model counts the exact loop only
    fl = None if name.endswith("]") else diffusion_flops(
        cfg, prompt_len=prompt_len, num_visual=n_v, num_tiles=n_tiles, gen_length=g, steps=steps, keep=keep,
        reference=name == "torch", pre_llm=obj is not None and obj.stage == "pre_llm")
    return {
        "method": "none" if method is None else method,
        "stage": None if obj is None else obj.stage,
        "keep_percent": 100.0 if method is None else pct,
        "visual_tokens_kept": n_v if keep is None else keep,
        "seq_len_after_pruning": prompt_len + g - (0 if keep is None else n_v - keep),
        "latency_ms": 1e3 * median(lat),
        "latency_ms_min": 1e3 * min(lat),
        "latency_ms_runs": [1e3 * x for x in lat],
        "tokens_per_s": g / median(lat),
        "tokens_per_s_max": g / min(lat),
        "encode_ms": (1e3 * median([x["encode_s"] for x in runs]) if "encode_s" in runs[0] else None),
        "denoise_ms": (1e3 * median([x["denoise_s"] for x in runs]) if "denoise_s" in runs[0] else None),
        "flops": fl,
        "compile_s": compile_s,
    }


def add_llada_ratios(rows: dict[str, dict]) -> None:
    """Adds to every row: token-throughput gain over ``jax none`` (median and best of runs), × ``torch``, FLOP
    ratio jax none / variant."""
    base = rows["jax none"]
    torch_row = rows.get("torch")
    for row in rows.values():
        tps_ratio = ratio(row["tokens_per_s"], base["tokens_per_s"])
        row["throughput_gain_vs_jax_none"] = None if tps_ratio is None else tps_ratio - 1.0
        best = ratio(row["tokens_per_s_max"], base["tokens_per_s_max"])
        row["throughput_gain_vs_jax_none_best_of_runs"] = None if best is None else best - 1.0
        row["x_torch"] = ratio(row["tokens_per_s"], torch_row["tokens_per_s"]) if torch_row else None
        row["flop_ratio_vs_jax_none"] = ratio(base["flops"], row["flops"])


def format_llada_v(report: dict) -> str:
    """The LLaDA-V section's tables and target line."""
    env, s = report["env"], report["settings"]
    lines = ["", "LLaDA-V — masked diffusion, every pruning method (PyTorch reference vs vtp_jax)", "=" * 100,
             f"jax {env['jax_version']} · device {env['platform']} ({env['device_kind']}) · {env['cpu_count']} CPUs"
             + (f" · torch {env['torch_version']} ({env['torch_num_threads']} threads, "
                f"{env['torch_attn_implementation']} attention)" if "torch_version" in env else ""),
             f"prompt {s['prompt_len']} tokens ({s['num_visual_tokens']} visual: {s['num_tiles']} tiles × "
             f"{s['tokens_per_tile']} features, grid {s['grid'][0]}×{s['grid'][1]}, unpadded + newlines) × batch 1, "
             f"greedy low-confidence remasking, medians of {s['runs']} runs",
             cpu_share_line(env)]
    if busy_during_runs(env):
        lines.append(RUNS_BUSY_WARNING)
    cols = [("setting", 8, "<"), ("variant", 30, "<"), ("method", 13, "<"), ("keep %", 7, ">"), ("kept", 6, ">"),
            ("seq", 6, ">"), ("latency ms", 12, ">"), ("best ms", 9, ">"), ("tokens/s", 10, ">"), ("gain", 8, ">"),
            ("×torch", 8, ">"), ("GFLOP", 9, ">"), ("FLOP ×", 8, ">"), ("encode ms", 10, ">"),
            ("split ms", 15, ">"), ("compile s", 10, ">")]
    table = []
    for sname, sec in report["sections"].items():
        split = report["time_split_ms"].get(sname, {})
        for name, r in sec["rows"].items():
            p = split.get(name)
            split_s = "n/a" if not p else (f"{p['encode_ms']:.0f}+{p['first_step_ms']:.0f}"
                                           + (f"+{sec['steps'] - 1}×{p['later_step_ms_each']:.1f}"
                                              if p["later_step_ms_each"] is not None else ""))
            table.append([sname, name, "torch" if name == "torch" else r["method"], fmt_keep(r["keep_percent"]),
                          r["visual_tokens_kept"], r["seq_len_after_pruning"], f"{r['latency_ms']:.1f}",
                          f"{r['latency_ms_min']:.1f}", f"{r['tokens_per_s']:.2f}",
                          fmt_gain(r["throughput_gain_vs_jax_none"]), fmt(r["x_torch"], ".2f", "×"),
                          fmt(None if r["flops"] is None else r["flops"] / 1e9, ".3f"),
                          fmt(r["flop_ratio_vs_jax_none"], ".2f", "×"),
                          fmt(r["encode_ms"], ".1f"), split_s, fmt(r["compile_s"], ".1f")])
    lines += [""] + text_table(cols, table)
    for sname, sec in report["sections"].items():
        frac = s["visual_fraction"][sname]
        lines.append(f"{sname}: gen_length/steps {sname} (block {sec['block_length']}); visual tokens are "
                     f"{100 * frac:.0f} % of the {s['prompt_len'] + sec['gen_length']}-token sequence"
                     + ("" if sec["torch_jax_greedy_agreement_tokens"] is None else
                        f"; greedy tokens torch vs jax none: first {sec['torch_jax_greedy_agreement_tokens']} of "
                        f"{sec['gen_length']} identical" + (" (agree)" if sec["torch_jax_agree"] else " (DISAGREE)")))
    lines.append("(tokens/s = gen_length / latency, latency = vision encoding + every denoising step; best ms = "
                 "fastest run; gain = token throughput over jax none; FLOP × = analytic FLOP ratio jax none / "
                 "variant, the gain that FLOPs alone would give; torch's FLOPs include LLaDA's logits at every "
                 "position and transformers' extra SigLIP layer; split ms = encode + first step + later steps × ms "
                 "each, from separately synchronised runs)")
    if report["torch_skipped"]:
        lines.append(f"torch reference skipped: {report['torch_skipped']}")
    t = report["targets"]["redvtp50_throughput_gain"]
    mark = "" if report["targets"]["reliable"] else UNRELIABLE_MARK
    lines += ["",
              f"RedVTP keep 50% token-throughput gain at {t['setting']}: {fmt_gain(t['value']):>6}  "
              f"(target ≥ {fmt_gain(t['target'])})  {t['status']}{mark if t['status'] != 'SKIPPED' else ''}   "
              f"[best of runs: "
              f"{fmt_gain(t['value_best_of_runs'])}; FLOP bound: "
              f"{fmt_gain(None if t['flop_ratio'] is None else t['flop_ratio'] - 1.0)}]"]
    lines += format_fast_dllm_targets(report["targets"].get("fast_dllm", [])) + [""]
    return "\n".join(lines)
