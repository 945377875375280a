"""``vtp-bench --preset llava-1.5-7b|llava-next-7b|llada-v-8b [--layers N]``: the full-size presets (RANDOM weights).

**The weights are RANDOM** (:mod:`vtp_jax.testbed.full_size`): real shapes, names and configs, meaningless outputs.
This measures speed and memory only.

One command, four processes, so that each side's peak memory is its own and the parent stays small:

1. **parent** (this module, :func:`run_full_size`): measures the machine's memory read bandwidth
   (:func:`measure_bandwidth`), gets the HF checkpoint from the cache (:func:`vtp_jax.testbed.full_size.
   cached_checkpoint`; written once, bf16, shard by shard, with a progress bar), then starts the three children one
   after the other and merges their JSON results. The converted checkpoint goes into a temporary directory inside
   the cache directory and is deleted at the end.
2. ``vtp-convert HF_DIR OUT --dtype bfloat16`` (``python -m convert.cli``; its own tqdm bar): wall time (seconds)
   and peak RSS (bytes, ``ru_maxrss`` of that child from ``os.wait4``).
3. jax child (``python -m eval.full_size_bench child SPEC OUT``): ``vtp_jax.checkpoint.load`` (load time, s), then
   every variant through :class:`eval.bench.runners.JaxRunner` (LLaVA) /
   :class:`eval.bench.runners.JaxDiffusionRunner` (LLaDA-V): warm-up (the first call compiles: ``compile_s`` = its
   wall time, and ``compile_only_s`` = that minus the median timed run), then round-robin timed runs; rows by
   :func:`eval.bench.autoregressive.llava_row` / :func:`eval.bench.diffusion.llada_row` (the same definitions as the
   small presets: prefill ms, decode tokens/s; LLaDA-V latency ms and tokens/s). It writes the prompt it used
   (``inputs.npz``) for the torch child.
4. torch child (same entry point; skipped with ``--no-torch``): the same prompt on the same weights in **bf16**.
   LLaVA: transformers ``LlavaForConditionalGeneration.from_pretrained(dtype=bfloat16)`` through
   :class:`eval.bench.runners.TorchRunner`. LLaDA-V: :class:`vtp_jax.testbed.torch_llada_v.Reference` built on the
   meta device and filled with the checkpoint's bf16 tensors (:func:`load_reference_bf16`; the one SigLIP layer that
   LLaDA-V deletes but transformers' ``SiglipVisionModel`` still runs gets small random weights — its output is
   unused), sampled with LLaDA's loop (:class:`eval.bench.runners.TorchDiffusionRunner`). Which child runs is chosen
   by the family's generator kind (:data:`vtp_jax.families.AUTOREGRESSIVE` / ``MASKED_DIFFUSION``).

A child that fails (e.g. killed for memory: exit −9) is reported with its exit code; a failed torch child leaves the
jax results standing, a failed conversion or jax child raises :class:`FullSizeError` (``vtp-bench: error: ...``,
exit 1).

Variants (the existing machinery: :func:`eval.bench.methods.variant_specs`,
:func:`eval.bench.methods.build_variant_method`): LLaVA ``jax none`` + ``--methods`` (default here
``fastv,todre,divprune``) × ``--keeps`` (default 50,25,10); LLaDA-V at gen_length/steps 32/16 ``jax none`` +
``--llada-methods`` (default ``redvtp,llada-fastv,todre``) × ``--keeps``, and at 2/2 ``jax none`` +
``redvtp-<first keep>`` (when redvtp is selected). The LLaDA-V image is ``--llada-image HxW`` (default 480x640, a
typical photo: anyres 2×2 grid + base tile, 2929 visual tokens).

LLaVA-NeXT (``llava-next-7b``): the autoregressive child with the image's own anyres layout
(:func:`eval.bench.runners.make_llava_next_inputs`; default image 672 × 672 = the 2 × 2 pinpoint + base tile: 5
tiles, N_v = 2928 with newlines; ``--llada-image HxW`` overrides it), the methods built for that N_v (ToDRE keeps
round(N_v · keep)), the vision FLOPs of every tile (:func:`eval.bench.flops.anyres_vision_flops`), transformers'
``LlavaNextForConditionalGeneration`` with ``image_sizes`` on the torch side; default methods ``fastv,todre``. Every
LLaVA row also has ``e2e_ms`` (one whole generation: jax prefill + decode, torch its ``generate`` call) and
``e2e_speedup_vs_jax_none``; ``jax_over_torch.e2e_speed`` = torch e2e / jax none e2e.

Roofline (:func:`roofline`): at batch 1 every decode step (LLaVA) / denoising step (LLaDA-V) reads every bf16 weight
of the decoder layers, the final norm and the LM head once, so tokens/s ≤ bandwidth / weight bytes (LLaVA decode)
and ≤ (gen_length / steps) · bandwidth / weight bytes (LLaDA-V, ignoring the vision encoder and any compute). The
bandwidth is the best of :data:`BANDWIDTH_REPEATS` ``numpy.sum`` passes over a :data:`BANDWIDTH_BYTES` float32 array
(GB/s = 10⁹ bytes per second).

Units in the JSON: ``*_s`` seconds, ``*_ms`` milliseconds, ``*_bytes`` bytes, ``*_gb_per_s`` 10⁹ bytes / s,
``tokens_per_s`` tokens per second.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

from eval.bench.autoregressive import PRESETS, add_llava_ratios, llava_row
from eval.bench.diffusion import (
    LLADA_V_SETTINGS, add_llada_ratios, fast_dllm_targets, format_fast_dllm_targets, llada_row,
    parse_cache_variants, parse_llada_settings, setting_name,
)
from eval.bench.errors import BenchError
from eval.bench.flops import anyres_vision_flops, vision_flops
from eval.bench.methods import (
    build_variant_method, keeps_spec, methods_flag, methods_spec, parse_keeps, parse_methods, variant_name,
    variant_specs,
)
from eval.bench.report import RANDOM_WEIGHTS_NOTE, fmt, fmt_gain, fmt_keep, greedy_agreement, ratio, text_table
from eval.bench.runners import (
    JaxDiffusionRunner, JaxRunner, TorchDiffusionRunner, TorchRunner, make_inputs, make_llada_inputs,
    make_llava_next_inputs,
)
from vtp_jax import families
from vtp_jax.families import AUTOREGRESSIVE, MASKED_DIFFUSION
from vtp_jax.testbed import full_size as fs

FULL_SIZE_PRESETS = fs.PRESETS
# Default methods flag per family (its --methods / --llada-methods when not given).
DEFAULT_METHODS = {"llava": "fastv,todre,divprune", "llava_next": "fastv,todre", "llada_v": "redvtp,llada-fastv,todre"}
DEFAULT_LLADA_IMAGE = (480, 640)  # (height, width)
# LLaVA-NeXT's default image: 672 × 672 = the (672, 672) pinpoint, a 2 × 2 grid + the base tile = 5 CLIP tiles,
# N_v = 576 + 48 · (48 + 1) = 2928 (newlines included, as transformers counts them). ``--llada-image`` overrides it.
DEFAULT_IMAGE = {"llava_next": (672, 672)}
BANDWIDTH_BYTES = 1 << 30  # 1 GiB float32 array
BANDWIDTH_REPEATS = 5
DTYPE = "bfloat16"


class FullSizeError(RuntimeError):
    """The conversion or the jax child failed (reported as ``vtp-bench: error: ...``, exit 1)."""


# ---------------------------------------------------------------------------------------------------------------
# Machine
# ---------------------------------------------------------------------------------------------------------------

def measure_bandwidth(nbytes: int = BANDWIDTH_BYTES, repeats: int = BANDWIDTH_REPEATS,
                      threads: int | None = None) -> dict:
    """Memory read bandwidth in GB/s (10⁹ bytes per second): ``numpy.sum`` over a float32 array of ``nbytes`` bytes
    (written once first, so its pages exist), best of ``repeats``, once on one thread and once split over
    ``threads`` (default ``os.cpu_count()``) threads (numpy releases the GIL inside the reduction) →
    ``{"gb_per_s": best of all (the roofline's), "single_thread_gb_per_s", "threads", "runs_gb_per_s": the
    multi-thread runs, "bytes"}``. One thread alone cannot saturate a server's memory system, so the roofline uses
    the better of the two."""
    from concurrent.futures import ThreadPoolExecutor

    threads = threads or os.cpu_count() or 1
    x = np.ones(max(nbytes // 4, threads), np.float32)
    parts = np.array_split(x, threads)

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return x.nbytes / (time.perf_counter() - t0) / 1e9

    single = [timed(x.sum) for _ in range(repeats)]
    with ThreadPoolExecutor(threads) as pool:
        multi = [timed(lambda: list(pool.map(np.sum, parts))) for _ in range(repeats)]
    del x, parts
    return {"gb_per_s": max(single + multi), "single_thread_gb_per_s": max(single), "threads": threads,
            "runs_gb_per_s": multi, "bytes": int(nbytes)}


def roofline(config: dict, bandwidth_gb_s: float, settings=LLADA_V_SETTINGS) -> dict:
    """Weight-read bound at batch 1: ``weight_bytes`` (bf16 decoder layers + final norm + LM head, bytes),
    ``steps_per_s`` = bandwidth / weight_bytes; LLaVA ``decode_tokens_per_s`` = steps_per_s; LLaDA-V
    ``tokens_per_s`` per setting (gen_length, steps, block_length) = steps_per_s · gen_length / steps (the exact
    loop: one weight read per denoising step)."""
    weight_bytes = fs.decoder_weight_bytes(config, 2)
    steps = bandwidth_gb_s * 1e9 / weight_bytes
    out: dict[str, Any] = {"weight_bytes": weight_bytes, "bandwidth_gb_per_s": bandwidth_gb_s, "steps_per_s": steps}
    if families.for_model_type(config["model_type"]).autoregressive:
        out["decode_tokens_per_s"] = steps
    else:
        out["tokens_per_s"] = {setting_name(g, st, bl): steps * g / st for g, st, bl in settings}
    return out


def _loadavg() -> list[float] | None:
    try:
        return [float(x) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _total_ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _spawn(cmd: list[str], peak_file: str) -> dict:
    """Runs ``cmd`` (stdout / stderr inherited: progress bars show) → ``{"rc", "wall_s", "peak_rss_bytes",
    "ru_maxrss_bytes"}``. ``peak_rss_bytes`` is the child's own high-water mark (``VmHWM`` of /proc/self/status,
    which the child writes to ``peak_file`` as it ends; None if it died first). ``ru_maxrss_bytes`` (``os.wait4``)
    is kept only as a fallback: Linux carries the parent's peak RSS into a child's ``ru_maxrss`` across fork + exec,
    so it is an upper bound, not the child's own peak."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=_repo_root())
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    peak = None
    if os.path.isfile(peak_file):
        with open(peak_file, encoding="utf-8") as f:
            peak = int(f.read().strip())
    return {"rc": proc.returncode, "wall_s": time.perf_counter() - t0, "peak_rss_bytes": peak,
            "ru_maxrss_bytes": int(usage.ru_maxrss) * 1024}


def vm_hwm_bytes() -> int:
    """This process's peak resident set size in bytes: ``VmHWM`` from /proc/self/status (Linux; the memory image's
    own high-water mark, fresh at exec), else ``ru_maxrss`` of RUSAGE_SELF."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _write_peak(path: str | None) -> None:
    if path:
        with open(path, "w", encoding="utf-8") as f:
            f.write(str(vm_hwm_bytes()))


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rc_text(rc: int) -> str:
    return f"exit code {rc}" + (" (killed by signal 9: out of memory?)" if rc == -9 else "")


# ---------------------------------------------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------------------------------------------

def parse_image(spec: str | None) -> tuple[int, int]:
    """``--llada-image HxW`` → (height, width); None → :data:`DEFAULT_LLADA_IMAGE`.

    Raises BenchError: not two whole numbers, a side < 1, or more pixels (H × W) than image files may have
    (:func:`vtp_jax.processing.default_max_image_pixels`, PIL's 89,478,485): the benchmark builds the image in
    memory, so a typo such as 48000x64000 would otherwise end in a MemoryError."""
    from vtp_jax.processing import default_max_image_pixels

    if spec is None:
        return DEFAULT_LLADA_IMAGE
    try:
        h, w = (int(v) for v in spec.lower().split("x"))
    except ValueError:
        raise BenchError(f"--llada-image: expected HEIGHTxWIDTH in pixels (e.g. 480x640), got {spec!r}") from None
    if h < 1 or w < 1:
        raise BenchError(f"--llada-image: sizes must be positive, got {spec!r}")
    limit = default_max_image_pixels()
    if limit is not None and h * w > limit:
        raise BenchError(f"--llada-image: {h}×{w} = {h * w:,} pixels is over the limit of {limit:,} pixels")
    return h, w


def preset_overrides(args: argparse.Namespace) -> dict:
    """The width flags (``--text-hidden`` …) given for a full-size preset → overrides (tests only; a reduced model).
    Raises BenchError for ``--text-layers`` / ``--vocab-size`` (use ``--layers``; the vocabulary stays real)."""
    out = {}
    for key in PRESETS["tiny"]:
        value = getattr(args, key, None)
        if value is None:
            continue
        if key not in fs.OVERRIDE_KEYS:
            flag = "--" + key.replace("_", "-")
            raise BenchError(f"{flag} does not apply to the full-size presets"
                                   + (" (use --layers)" if key == "text_layers" else ""))
        out[key] = value
    return out


def validate(args: argparse.Namespace) -> dict:
    """Checks every full-size flag before anything runs → the resolved settings. Raises BenchError."""
    family = fs.FAMILY[args.preset]
    try:
        fs.check_preset(args.preset, args.layers)
        overrides = preset_overrides(args)
        fs.preset_config(args.preset, layers=args.layers, overrides=overrides)
    except fs.PresetError as e:
        raise BenchError(str(e)) from None
    if args.runs < 1 or args.warmup < 0 or args.max_new_tokens < 2 or args.batch < 1:
        raise BenchError("need --runs ≥ 1, --warmup ≥ 0, --max-new-tokens ≥ 2, --batch ≥ 1")
    if args.family not in ("all", family):
        raise BenchError(f"--preset {args.preset} is a {family} model; --family {args.family} does not fit")
    methods = {}  # every family's methods flag is checked, the preset's family's is used
    for name, default in DEFAULT_METHODS.items():
        spec = methods_spec(args, name)
        methods[name] = parse_methods(default if spec is None else spec, name)
    keeps = parse_keeps(keeps_spec(args))
    n_layers = fs.MAX_LAYERS if args.layers is None else args.layers
    skipped = {}
    if "fastv" in methods[family] and not 1 <= args.fastv_layer < n_layers:
        why = f"FastV at layer K = {args.fastv_layer} needs a decoder of more than K layers (this one has {n_layers})"
        if methods_spec(args, family) is not None:  # asked for explicitly
            raise BenchError(f"{why}: raise --layers, lower --fastv-layer or leave fastv out of "
                             f"{methods_flag(family)}")
        methods[family] = [m for m in methods[family] if m != "fastv"]
        skipped["fastv"] = why
    image = getattr(args, "llada_image", None)
    image = list(DEFAULT_IMAGE[family]) if image is None and family in DEFAULT_IMAGE else list(parse_image(image))
    settings = parse_llada_settings(getattr(args, "llada_settings", None))
    variants = [list(v) for v in parse_cache_variants(getattr(args, "diffusion_cache", None))]
    if family != "llada_v" and (getattr(args, "llada_settings", None) is not None or variants):
        raise BenchError(f"--llada-settings / --diffusion-cache apply to the llada-v-8b preset, not {args.preset}")
    return {"family": family, "overrides": overrides, "methods": methods[family], "keeps": keeps, "layers": n_layers,
            "image": image, "skipped_methods": skipped, "llada_settings": settings, "cache_variants": variants}


def run_full_size(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
    """The whole full-size benchmark of ``args.preset`` → the family's JSON-able section (see the module doc)."""
    s = validate(args)
    family, preset = s["family"], args.preset
    config = fs.preset_config(preset, layers=args.layers, overrides=s["overrides"])
    counts = fs.param_count(config)
    log("-" * 100)
    log(f"{preset} (full size, {s['layers']} of 32 decoder layers) — {RANDOM_WEIGHTS_NOTE}")
    if s["overrides"]:
        log(f"REDUCED WIDTHS (test override, not the real model): {s['overrides']}")
    for m, why in s["skipped_methods"].items():
        log(f"NOTE: {m} skipped: {why}")
    log(f"parameters: {counts['total']:,} in all, decoder {counts['decoder']:,}")
    log("-" * 100)
    report: dict[str, Any] = {"preset": preset, "full_size": True, "layers": s["layers"], "dtype": DTYPE,
                              "overrides": s["overrides"], "params": counts, "methods": s["methods"],
                              "keeps_percent": s["keeps"], "skipped_methods": s["skipped_methods"]}
    bw = measure_bandwidth(getattr(args, "bandwidth_bytes", None) or BANDWIDTH_BYTES)
    log(f"memory read bandwidth: {bw['gb_per_s']:.1f} GB/s (numpy sum over {bw['bytes'] / 2**30:.2f} GiB on "
        f"{bw['threads']} threads, best of {len(bw['runs_gb_per_s'])}; one thread: {bw['single_thread_gb_per_s']:.1f})")
    report["machine"] = {"memory_bandwidth": bw, "cpu_count": os.cpu_count(), "total_ram_bytes": _total_ram_bytes(),
                         "machine": platform.machine(), "python": platform.python_version(),
                         "loadavg_start": _loadavg()}  # 1/5/15-minute load: other jobs on the CPUs skew timings
    report["roofline"] = roofline(config, bw["gb_per_s"], s["llada_settings"])

    cache_dir = args.cache_dir or fs.default_cache_dir()
    hf_dir, info = fs.cached_checkpoint(preset, args.layers, DTYPE, cache_dir, overrides=s["overrides"] or None,
                                        progress=not args.quiet, log=log)
    report["checkpoint"] = {"hf_dir": hf_dir, **info}
    log(f"checkpoint: {hf_dir} ({info['bytes'] / 1e9:.2f} GB; "
        + ("cached)" if info["cached"] else f"written in {info['write_s']:.1f} s)"))

    work = tempfile.mkdtemp(prefix=".bench-", dir=cache_dir)
    try:
        jax_dir = os.path.join(work, "converted")
        cmd = [sys.executable, "-m", "eval.full_size_bench", "convert", os.path.join(work, "convert_peak"), "--",
               hf_dir, jax_dir, "--dtype", DTYPE]
        if args.quiet:
            cmd.append("--no-progress")
        log("converting with vtp-convert (subprocess) ...")
        conv = _spawn(cmd, os.path.join(work, "convert_peak"))
        report["convert"] = conv
        if conv["rc"] != 0:
            raise FullSizeError(f"vtp-convert failed ({_rc_text(conv['rc'])})")
        log(f"converted in {conv['wall_s']:.1f} s, peak RSS {conv['peak_rss_bytes'] / 1e9:.2f} GB")

        spec = {"family": family, "preset": preset, "hf_dir": hf_dir, "jax_dir": jax_dir,
                "inputs": os.path.join(work, "inputs.npz"), "runs": args.runs, "warmup": args.warmup,
                "max_new_tokens": args.max_new_tokens, "batch": args.batch, "fastv_layer": args.fastv_layer,
                "methods": s["methods"], "keeps": s["keeps"], "image": s["image"], "quiet": args.quiet,
                "torch_threads": args.torch_threads, "torch_attn": args.torch_attn,
                "llada_settings": [list(x) for x in s["llada_settings"]], "diffusion_cache": s["cache_variants"]}
        sides: dict[str, dict | None] = {}
        for side in ("jax", "torch"):
            if side == "torch" and args.no_torch:
                sides[side] = None
                continue
            spec_path, out_path = os.path.join(work, f"{side}_spec.json"), os.path.join(work, f"{side}_out.json")
            with open(spec_path, "w", encoding="utf-8") as f:
                json.dump({**spec, "side": side}, f)
            log(f"{side} side (subprocess) ...")
            proc = _spawn([sys.executable, "-m", "eval.full_size_bench", "child", spec_path, out_path],
                          out_path + ".peak")
            if proc["rc"] != 0 or not os.path.isfile(out_path):
                if side == "jax":
                    raise FullSizeError(f"the jax child failed ({_rc_text(proc['rc'])})")
                log(f"WARNING: the torch child failed ({_rc_text(proc['rc'])}); reporting jax only")
                sides[side] = {"failed": _rc_text(proc["rc"]), **proc}
                continue
            with open(out_path, encoding="utf-8") as f:
                sides[side] = {**json.load(f), "wall_s": proc["wall_s"], "peak_rss_bytes": proc["peak_rss_bytes"]}
            log(f"{side}: load {sides[side]['load_s']:.1f} s, peak RSS {proc['peak_rss_bytes'] / 1e9:.2f} GB, "
                f"child wall {proc['wall_s']:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["machine"]["loadavg_end"] = _loadavg()
    report.update(merge(family, sides))
    report["torch_skipped"] = "--no-torch" if args.no_torch else (sides["torch"] or {}).get("failed")
    return report


def merge(family: str, sides: dict[str, dict | None]) -> dict:
    """The children's results → ``jax`` / ``torch`` summaries (load s, peak RSS bytes, wall s), the rows (LLaVA) or
    per-setting sections (LLaDA-V) with the torch row added and the ratios of :mod:`eval.bench`, and
    ``jax_over_torch`` (speed ratios jax / torch, and memory / load-time ratios jax / torch)."""
    jx, tc = sides["jax"], sides.get("torch")
    tc_ok = tc if tc and "failed" not in tc else None
    keys = ("load_s", "peak_rss_bytes", "wall_s", "rss_after_load_bytes", "env")
    out: dict[str, Any] = {"jax": {k: jx.get(k) for k in keys},
                           "torch": None if tc is None else {k: tc.get(k) for k in keys + ("failed",)}}
    ratios: dict[str, Any] = {}
    if tc_ok:
        ratios["peak_rss"] = ratio(jx["peak_rss_bytes"], tc_ok["peak_rss_bytes"])
        ratios["load_time"] = ratio(jx["load_s"], tc_ok["load_s"])
    out.update(_MERGE_ROWS[families.get(family).kind](jx, tc_ok, ratios))
    out["settings"] = jx["settings"]
    out["jax_over_torch"] = ratios
    return out


def _merge_autoregressive(jx: dict, tc_ok: dict | None, ratios: dict) -> dict:
    """LLaVA: the jax rows with the torch row first (if any) and the ratios of :func:`add_llava_ratios`; adds the
    prefill and decode speed ratios jax / torch to ``ratios`` → ``{"rows", ["torch_jax_greedy_agreement_tokens"]}``."""
    out: dict[str, Any] = {}
    rows = dict(jx["rows"])
    if tc_ok:
        rows = {"torch": tc_ok["rows"]["torch"], **rows}
    add_llava_ratios(rows)
    out["rows"] = rows
    if tc_ok:
        base = rows["jax none"]
        ratios["prefill_speed"] = ratio(rows["torch"]["prefill_ms"], base["prefill_ms"])
        ratios["decode_tokens_per_s"] = base["decode_x_torch"]
        ratios["e2e_speed"] = ratio(rows["torch"]["e2e_ms"], base["e2e_ms"])
        out["torch_jax_greedy_agreement_tokens"] = greedy_agreement(np.asarray(tc_ok["tokens"]),
                                                                    np.asarray(jx["tokens"]))
    return out


def _merge_diffusion(jx: dict, tc_ok: dict | None, ratios: dict) -> dict:
    """LLaDA-V: per setting, the jax rows with the torch row first (if any) and the ratios of
    :func:`add_llada_ratios`; adds each setting's tokens/s ratio jax / torch to ``ratios`` → ``{"sections"}``."""
    sections = {}
    for sname, sec in jx["sections"].items():
        rows = dict(sec["rows"])
        if tc_ok and sname in tc_ok["sections"]:
            rows = {"torch": tc_ok["sections"][sname]["rows"]["torch"], **rows}
        add_llada_ratios(rows)
        sections[sname] = {**sec, "rows": rows}
        if tc_ok and "torch" in rows:
            ratios[f"tokens_per_s_{sname}"] = rows["jax none"]["x_torch"]
            agree = greedy_agreement(np.asarray([tc_ok["sections"][sname]["tokens"]]), np.asarray([sec["tokens"]]))
            sections[sname]["torch_jax_greedy_agreement_tokens"] = agree
    return {"sections": sections, "fast_dllm_targets": fast_dllm_targets(sections)}


# The rows of a merged report, by the family's generator kind: (jax result, torch result or None, ratios) → keys.
_MERGE_ROWS = {AUTOREGRESSIVE: _merge_autoregressive, MASKED_DIFFUSION: _merge_diffusion}


def format_full_size(report: dict) -> str:
    """Human-readable summary of one full-size section."""
    gb = 1e9
    r, jx, tc = report, report["jax"], report["torch"]
    bw = r["machine"]["memory_bandwidth"]["gb_per_s"]
    lines = ["", f"{r['preset']} — FULL SIZE, {r['layers']} of 32 decoder layers, {r['dtype']}, "
             f"{RANDOM_WEIGHTS_NOTE.upper()}", "=" * 100]
    if r["overrides"]:
        lines.append(f"REDUCED WIDTHS (test override, not the real model): {r['overrides']}")
    p = r["params"]
    lines.append(f"parameters {p['total']:,} (decoder {p['decoder']:,}); {r['machine']['cpu_count']} CPUs, RAM "
                 f"{_gb(r['machine']['total_ram_bytes'])} GB")
    la0, la1 = r["machine"].get("loadavg_start"), r["machine"].get("loadavg_end")
    if la0 and la1:
        lines.append(f"load average (1 min) {la0[0]:.2f} at the start, {la1[0]:.2f} at the end "
                     f"({r['machine']['cpu_count']} CPUs; other jobs on them slow every row)")
    ck = r["checkpoint"]
    lines.append(f"checkpoint: {'cached' if ck['cached'] else 'written in %.1f s' % ck['write_s']}, "
                 f"{ck['bytes'] / gb:.2f} GB on disk")
    c = r["convert"]
    lines.append(f"vtp-convert: {c['wall_s']:.1f} s, peak RSS {c['peak_rss_bytes'] / gb:.2f} GB")
    lines.append(f"jax:   load {jx['load_s']:.1f} s, peak RSS {jx['peak_rss_bytes'] / gb:.2f} GB (child wall "
                 f"{jx['wall_s']:.0f} s)")
    if tc and not tc.get("failed"):
        lines.append(f"torch: load {tc['load_s']:.1f} s, peak RSS {tc['peak_rss_bytes'] / gb:.2f} GB (child wall "
                     f"{tc['wall_s']:.0f} s)")
    elif tc:
        lines.append(f"torch: FAILED ({tc['failed']})")
    else:
        lines.append(f"torch: skipped ({r.get('torch_skipped')})")
    rf = r["roofline"]
    lines.append(f"memory read bandwidth {bw:.1f} GB/s; decoder+head weights {rf['weight_bytes'] / gb:.2f} GB bf16 → "
                 f"weight-read roofline {rf['steps_per_s']:.2f} steps/s"
                 + (f" = {rf['decode_tokens_per_s']:.2f} decode tokens/s" if "decode_tokens_per_s" in rf else
                    " = " + ", ".join(f"{v:.2f} tokens/s at {k}" for k, v in rf["tokens_per_s"].items())))
    lines.append("")
    if "rows" in r:
        cols = [("variant", 18, "<"), ("keep %", 7, ">"), ("kept", 6, ">"), ("LLM T", 7, ">"),
                ("prefill ms", 12, ">"), ("decode tok/s", 13, ">"), ("of roofline", 12, ">"), ("prefill ×", 10, ">"),
                ("e2e ms", 10, ">"), ("e2e ×", 7, ">"), ("FLOPs ÷", 8, ">"),
                ("dec ×torch", 11, ">"), ("compile s", 10, ">"), ("compile-only s", 15, ">")]
        table = []
        for name, row in r["rows"].items():
            table.append([name, fmt_keep(row["keep_percent"]), row["visual_tokens_kept"],
                          row["llm_tokens_after_pruning"], f"{row['prefill_ms']:.1f}",
                          f"{row['decode_tokens_per_s']:.2f}",
                          f"{100 * row['decode_tokens_per_s'] / rf['decode_tokens_per_s']:.0f} %",
                          fmt(row["prefill_speedup_vs_jax_none"], ".2f", "×"), f"{row['e2e_ms']:.1f}",
                          fmt(row.get("e2e_speedup_vs_jax_none"), ".2f", "×"),
                          fmt(row["prefill_flop_ratio_vs_jax_none"], ".2f", "×"),
                          fmt(row["decode_x_torch"], ".2f", "×"), fmt(row["compile_s"], ".1f"),
                          fmt(row.get("compile_only_s"), ".1f")])
        lines += text_table(cols, table)
        st = r["settings"]
        if "num_tiles" in st:
            lines.append(f"image {st['image'][0]}×{st['image'][1]} → {st['num_tiles']} tiles (grid "
                         f"{st['grid'][0]}×{st['grid'][1]} + base), {st['num_visual_tokens']} visual tokens with "
                         f"newlines, prompt {st['prompt_len']} tokens, {st['max_new_tokens']} new tokens")
        lines.append("(e2e ms = one whole generation: prefill + decode; e2e × and FLOPs ÷ relative to jax none; "
                     "FLOPs = analytic prefill FLOPs, vision included)")
        if r.get("torch_jax_greedy_agreement_tokens") is not None:
            lines.append(f"greedy tokens torch vs jax none: first {r['torch_jax_greedy_agreement_tokens']} identical "
                         "(bf16 on both sides: early divergence on random weights is expected)")
    else:
        cols = [("setting", 8, "<"), ("variant", 30, "<"), ("keep %", 7, ">"), ("kept", 6, ">"), ("seq", 6, ">"),
                ("latency ms", 12, ">"), ("tokens/s", 10, ">"), ("of roofline", 12, ">"), ("gain", 8, ">"),
                ("×torch", 8, ">"), ("encode ms", 10, ">"), ("compile s", 10, ">")]
        table = []
        for sname, sec in r["sections"].items():
            bound = rf["tokens_per_s"].get(sname)
            for name, row in sec["rows"].items():
                table.append([sname, name, fmt_keep(row["keep_percent"]), row["visual_tokens_kept"],
                              row["seq_len_after_pruning"], f"{row['latency_ms']:.1f}",
                              f"{row['tokens_per_s']:.3f}", f"{100 * row['tokens_per_s'] / bound:.0f} %",
                              fmt_gain(row["throughput_gain_vs_jax_none"]), fmt(row["x_torch"], ".2f", "×"),
                              fmt(row["encode_ms"], ".1f"), fmt(row["compile_s"], ".1f")])
        lines += text_table(cols, table)
        for sname, sec in r["sections"].items():
            if sec.get("torch_jax_greedy_agreement_tokens") is not None:
                lines.append(f"{sname}: greedy tokens torch vs jax none: first "
                             f"{sec['torch_jax_greedy_agreement_tokens']} of {sec['gen_length']} identical (bf16)")
        st = r["settings"]
        lines.append(f"image {st['image'][0]}×{st['image'][1]} → {st['num_visual_tokens']} visual tokens "
                     f"({st['num_tiles']} tiles), prompt {st['prompt_len']} tokens")
        lines += format_fast_dllm_targets(r.get("fast_dllm_targets", []))
    ratios = r["jax_over_torch"]
    if ratios:
        lines.append("jax / torch: " + ", ".join(f"{k} {v:.2f}×" for k, v in ratios.items() if v is not None)
                     + " (speed: higher = jax faster; peak_rss / load_time: lower = jax smaller / quicker)")
    lines.append("(of roofline = measured tokens/s ÷ the weight-read bound; compile s = first call's wall time, "
                 "compile-only s = that minus the median timed run)")
    return "\n".join(lines) + "\n"


def _gb(x: int | None) -> str:
    return "n/a" if x is None else f"{x / 1e9:.1f}"


# ---------------------------------------------------------------------------------------------------------------
# Children
# ---------------------------------------------------------------------------------------------------------------


def _rounds(runners: dict[str, Any], warmup: int, runs: int, quiet: bool, desc: str, jax_side: bool) -> dict:
    """Warm-up (jax: ≥ 1, it compiles), then ``runs`` round-robin timed runs → {name: [run dicts]}; a tqdm bar."""
    from tqdm.auto import tqdm

    n_warm = max(warmup, 1) if jax_side else warmup
    raw: dict[str, list] = {name: [] for name in runners}
    with tqdm(total=len(runners) * (n_warm + runs), desc=desc, unit="run", disable=quiet, file=sys.stderr) as bar:
        for name, runner in runners.items():
            for _ in range(n_warm):
                runner.warmup()
                bar.update(1)
        for _ in range(runs):
            for name, runner in runners.items():
                raw[name].append(runner.run())
                bar.update(1)
    return raw


def _compile_only(row: dict, key: str) -> None:
    if row.get("compile_s") is not None:
        row["compile_only_s"] = row["compile_s"] - row[key] / 1e3


def _autoregressive_child(spec: dict, side: str) -> dict:
    """One side (``"jax"`` / ``"torch"``) of a LLaVA preset → its JSON-able result (see the module doc)."""
    from vtp_jax.config import config_from_hf

    n, batch = spec["max_new_tokens"], spec["batch"]
    anyres = spec["family"] == "llava_next"  # LLaVA-NeXT: the image's own layout (tiles, N_v), image_sizes
    out: dict[str, Any] = {}
    if side == "jax":
        import jax

        from vtp_jax.checkpoint import load

        t0 = time.perf_counter()
        model, cfg, _ = load(spec["jax_dir"])
        out["load_s"] = time.perf_counter() - t0
        out["rss_after_load_bytes"] = vm_hwm_bytes()
        text_range = fs.TEXT_ID_RANGE[spec["preset"]]
        if anyres:
            inputs = make_llava_next_inputs(model, tuple(spec["image"]), batch, bos_id=fs.LLAVA_BOS_ID,
                                            text_range=text_range)
            n_v = inputs["num_visual"]
            np.savez(spec["inputs"], **{k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values",
                                                               "image_sizes")})
        else:
            inputs = make_inputs(cfg, batch, bos_id=fs.LLAVA_BOS_ID, text_range=text_range)
            n_v = cfg.num_visual_tokens
            np.savez(spec["inputs"], **inputs)
        specs = variant_specs(spec["methods"], spec["keeps"])
        objs = {name: build_variant_method(m, spec["family"], n_v, cfg.text.num_hidden_layers, pct,
                                           layer=spec["fastv_layer"] if m == "fastv" else None)
                for name, m, pct in specs}
        runners = {name: JaxRunner(model, objs[name], inputs, n, fs.LLAVA_PAD_ID) for name, _, _ in specs}
        raw = _rounds(runners, spec["warmup"], spec["runs"], spec["quiet"], "jax runs", True)
        prompt_len = inputs["input_ids"].shape[1]
        vis = anyres_vision_flops(cfg, inputs["num_tiles"], batch) if anyres else vision_flops(cfg, batch)
        rows = {}
        for name, m, pct in specs:
            rows[name] = llava_row(raw[name], obj=objs[name], method=m, pct=pct,
                                   compile_s=runners[name].compile_s, cfg=cfg, prompt_len=prompt_len, n=n,
                                   batch=batch, vision_flops_=vis, num_visual=n_v)
            _compile_only(rows[name], "prefill_ms")
        out["rows"] = rows
        out["tokens"] = runners["jax none"].last_tokens.tolist()
        dev = jax.devices()[0]
        out["env"] = {"jax_version": jax.__version__, "platform": dev.platform, "device_kind": dev.device_kind}
        out["settings"] = {"prompt_len": prompt_len, "num_visual_tokens": n_v, "max_new_tokens": n,
                           "batch": batch, "runs": spec["runs"], "warmup": spec["warmup"],
                           "fastv_layer": spec["fastv_layer"], "variants": [s[0] for s in specs]}
        if anyres:
            out["settings"].update(image=list(spec["image"]), num_tiles=inputs["num_tiles"], grid=list(inputs["grid"]),
                                   vision_flops=vis)
    else:
        import torch

        with open(os.path.join(spec["hf_dir"], "config.json"), encoding="utf-8") as f:
            cfg = config_from_hf(json.load(f))
        inputs = dict(np.load(spec["inputs"]))
        runner = TorchRunner(spec["hf_dir"], inputs, n, fs.LLAVA_PAD_ID, spec["torch_threads"], dtype=DTYPE,
                             model_class="LlavaNextForConditionalGeneration" if anyres
                             else "LlavaForConditionalGeneration")
        out["load_s"] = runner.load_s
        out["rss_after_load_bytes"] = vm_hwm_bytes()
        _rounds({"torch": runner}, spec["warmup"], spec["runs"], spec["quiet"], "torch runs", False)
        raw = runner.finalize(batch)
        n_v = int((inputs["input_ids"][0] == cfg.image_token_id).sum())
        if anyres:
            from vtp_jax.modeling.anyres import layout_for_config

            vis = anyres_vision_flops(cfg, layout_for_config(cfg, tuple(spec["image"])).num_tiles, batch)
        else:
            vis = vision_flops(cfg, batch)
        out["rows"] = {"torch": llava_row(raw, obj=None, method=None, pct=None, compile_s=None, cfg=cfg,
                                          prompt_len=inputs["input_ids"].shape[1], n=n, batch=batch,
                                          vision_flops_=vis, num_visual=n_v)}
        out["tokens"] = runner.last_tokens.tolist()
        out["env"] = {"torch_version": torch.__version__, "torch_num_threads": torch.get_num_threads(),
                      "dtype": DTYPE}
    return out


def _llada_settings(spec: dict) -> list[tuple[str, int, int, int, list[tuple[str, str | None, float | None]]]]:
    """(name, gen_length, steps, block_length, variant specs) per setting: 32/16 every method × keep; 2/2 jax none
    and RedVTP at the first keep (when selected)."""
    out = []
    for i, (g, st, bl) in enumerate(tuple(x) for x in spec.get("llada_settings", LLADA_V_SETTINGS)):
        if i == 0:
            specs = variant_specs(spec["methods"], spec["keeps"])
        else:
            specs = [("jax none", None, None)]
            if "redvtp" in spec["methods"]:
                k = spec["keeps"][0]
                specs.append((variant_name("redvtp", k), "redvtp", k))
        out.append((setting_name(g, st, bl), g, st, bl, specs))
    return out


def _diffusion_config(cfg, g: int, st: int, bl: int):
    from vtp_jax.generation.diffusion import DiffusionConfig

    mask = int(cfg.mask_token_id)
    return DiffusionConfig(gen_length=g, block_length=bl, steps=st, mask_id=mask,
                           suppress_ids=tuple(i for i in fs.LLADA_SUPPRESS_IDS if i != mask and i < cfg.text.vocab_size))


def _diffusion_child(spec: dict, side: str) -> dict:
    """One side (``"jax"`` / ``"torch"``) of a LLaDA-V preset → its JSON-able result (see the module doc)."""
    from vtp_jax.config import config_from_hf

    out: dict[str, Any] = {}
    settings = _llada_settings(spec)
    with open(os.path.join(spec["hf_dir"], "config.json"), encoding="utf-8") as f:
        raw_config = json.load(f)
    if side == "jax":
        import jax

        from vtp_jax.checkpoint import load

        t0 = time.perf_counter()
        model, cfg, _ = load(spec["jax_dir"])
        out["load_s"] = time.perf_counter() - t0
        out["rss_after_load_bytes"] = vm_hwm_bytes()
        inputs = make_llada_inputs(model, tuple(spec["image"]), bos_id=fs.LLADA_BOS_ID,
                                   text_range=fs.TEXT_ID_RANGE[spec["preset"]])
        np.savez(spec["inputs"], input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                 pixel_values=inputs["pixel_values"], image_size=np.asarray(inputs["image_size"]),
                 num_visual=inputs["num_visual"], num_tiles=inputs["num_tiles"], grid=np.asarray(inputs["grid"]))
        n_v, n_tiles, prompt_len = inputs["num_visual"], inputs["num_tiles"], inputs["input_ids"].shape[1]
        runners: dict[str, Any] = {}
        meta: dict[str, tuple] = {}
        for sname, g, st, bl, specs in settings:
            if prompt_len + g > cfg.text.max_position_embeddings:
                raise BenchError(f"prompt ({prompt_len}) + gen_length ({g}) exceeds max positions")
            dcfg = _diffusion_config(cfg, g, st, bl)
            for name, m, pct in specs:
                obj = build_variant_method(m, spec["family"], n_v, cfg.text.num_hidden_layers, pct)
                runners[f"{sname} {name}"] = JaxDiffusionRunner(model, dcfg, obj, inputs)
                meta[f"{sname} {name}"] = (sname, g, st, bl, name, m, pct, obj)
                for label, mode, tau in spec.get("diffusion_cache", []):  # Fast-dLLM caching / parallel decoding
                    cname = f"{name} [{label}]"
                    runners[f"{sname} {cname}"] = JaxDiffusionRunner(
                        model, dataclasses.replace(dcfg, cache=mode, threshold=tau), obj, inputs)
                    meta[f"{sname} {cname}"] = (sname, g, st, bl, cname, m, pct, obj)
        raw = _rounds(runners, spec["warmup"], spec["runs"], spec["quiet"], "jax runs", True)
        sections: dict[str, dict] = {}
        for key, (sname, g, st, bl, name, m, pct, obj) in meta.items():
            sec = sections.setdefault(sname, {"gen_length": g, "steps": st, "block_length": bl, "rows": {}})
            row = llada_row(raw[key], name=name, obj=obj, method=m, pct=pct, keep=getattr(obj, "keep", None),
                            compile_s=runners[key].compile_s, cfg=cfg, prompt_len=prompt_len, n_v=n_v,
                            n_tiles=n_tiles, gen_length=g, steps=st)
            _compile_only(row, "latency_ms")
            sec["rows"][name] = row
            if name == "jax none":
                sec["tokens"] = runners[key].last_tokens[0].tolist()
        out["sections"] = sections
        dev = jax.devices()[0]
        out["env"] = {"jax_version": jax.__version__, "platform": dev.platform, "device_kind": dev.device_kind}
        out["settings"] = {"image": list(spec["image"]), "num_visual_tokens": n_v, "num_tiles": n_tiles,
                           "grid": list(inputs["grid"]), "prompt_len": prompt_len, "runs": spec["runs"],
                           "warmup": spec["warmup"]}
    else:
        import torch

        cfg = config_from_hf(raw_config)
        z = np.load(spec["inputs"])
        inputs = {"input_ids": z["input_ids"], "attention_mask": z["attention_mask"],
                  "pixel_values": z["pixel_values"], "image_size": tuple(int(v) for v in z["image_size"]),
                  "num_visual": int(z["num_visual"]), "num_tiles": int(z["num_tiles"])}
        if spec["torch_threads"] is not None:
            torch.set_num_threads(spec["torch_threads"])
        t0 = time.perf_counter()
        ref = load_reference_bf16(spec["hf_dir"], attn_implementation=spec["torch_attn"])
        out["load_s"] = time.perf_counter() - t0
        out["rss_after_load_bytes"] = vm_hwm_bytes()
        runners = {}
        for sname, g, st, bl, _ in settings:
            runners[sname] = TorchDiffusionRunner(ref, _diffusion_config(cfg, g, st, bl), inputs)
        raw = _rounds(runners, spec["warmup"], spec["runs"], spec["quiet"], "torch runs", False)
        out["sections"] = {}
        for sname, g, st, bl, _ in settings:
            row = llada_row(raw[sname], name="torch", obj=None, method=None, pct=None, keep=None,
                            compile_s=None, cfg=cfg, prompt_len=inputs["input_ids"].shape[1],
                            n_v=inputs["num_visual"], n_tiles=inputs["num_tiles"], gen_length=g, steps=st)
            out["sections"][sname] = {"rows": {"torch": row}, "tokens": runners[sname].last_tokens[0].tolist()}
        out["env"] = {"torch_version": torch.__version__, "torch_num_threads": torch.get_num_threads(),
                      "dtype": DTYPE, "attn_implementation": spec["torch_attn"]}
    return out


# The child of one side, by the family's generator kind: (spec, side) → its JSON-able result.
_CHILDREN = {AUTOREGRESSIVE: _autoregressive_child, MASKED_DIFFUSION: _diffusion_child}


def load_reference_bf16(hf_dir: str, attn_implementation: str = "sdpa"):
    """The PyTorch LLaDA-V reference (:class:`vtp_jax.testbed.torch_llada_v.Reference`) holding the checkpoint's
    bf16 tensors, built without ever materialising random weights: constructed on the meta device, then every
    parameter is assigned from the safetensors shards (LLaDA-V names → the reference's, the inverse of
    ``Reference.llada_v_state``). The SigLIP layer LLaDA-V deletes (transformers' tower runs it; its output is not
    used) gets U(±0.02) weights; rotary ``inv_freq`` and SigLIP ``position_ids`` (non-persistent buffers) are
    rebuilt on the CPU. The additive attention bias is cast to bf16 (SDPA needs the query's dtype).
    Raises KeyError / RuntimeError when the files do not fit the config."""
    import torch
    from safetensors import safe_open

    from vtp_jax.testbed import torch_llada_v

    with open(os.path.join(hf_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    with torch.device("meta"):
        ref = torch_llada_v.Reference(config, seed=0, attn_implementation=attn_implementation)
    disk_of: dict[str, str] = {}
    for k in ref.siglip.state_dict():
        disk_of["siglip." + k] = "model.vision_tower.vision_tower." + (k if k.startswith("vision_model.")
                                                                       else "vision_model." + k)
    for k in ref.projector.state_dict():
        disk_of["projector." + k] = "model.mm_projector." + k
    disk_of["image_newline"] = "model.image_newline"
    for k in ref.llama.state_dict():
        disk_of["llama." + k] = "model." + k
    disk_of["lm_head.weight"] = "lm_head.weight"
    with open(os.path.join(hf_dir, "model.safetensors.index.json"), encoding="utf-8") as f:
        weight_map = json.load(f)["weight_map"]
    deleted = f"encoder.layers.{config['vision_config']['num_hidden_layers']}."
    by_file: dict[str, list[str]] = {}
    state: dict[str, torch.Tensor] = {}
    meta_state = ref.state_dict()
    for ours, disk in disk_of.items():
        if disk in weight_map:
            by_file.setdefault(weight_map[disk], []).append(ours)
        elif deleted in ours:
            shape = meta_state[ours].shape
            fill = torch.ones(shape) if ours.endswith("weight") and len(shape) == 1 else \
                (torch.rand(shape) - 0.5) * 0.04
            state[ours] = fill.to(torch.bfloat16)
        else:
            raise KeyError(f"{disk!r} (for the reference's {ours!r}) is not in {hf_dir}")
    for fname, names in by_file.items():
        with safe_open(os.path.join(hf_dir, fname), framework="pt") as fh:
            for ours in names:
                state[ours] = fh.get_tensor(disk_of[ours])
    ref.load_state_dict(state, strict=True, assign=True)
    del state
    rotary = ref.llama.rotary_emb
    ref.llama.rotary_emb = type(rotary)(config=ref.llama.config)
    for module in ref.siglip.modules():  # SigLIP embeddings (transformers 5 dropped the ``vision_model`` level)
        buf = getattr(module, "position_ids", None)
        if isinstance(buf, torch.Tensor) and buf.is_meta:
            module.register_buffer("position_ids", torch.arange(buf.shape[-1]).expand((1, -1)), persistent=False)
    left = [n for n, t in list(ref.named_parameters()) + list(ref.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"tensors left on the meta device: {left[:5]}")
    bias = torch_llada_v.Reference.bidirectional_bias
    ref.bidirectional_bias = lambda mask: bias(mask).to(torch.bfloat16)
    return ref.eval()


def child_main(argv: list[str]) -> int:
    """Child entry points (started by :func:`run_full_size`; each writes its peak RSS in bytes, VmHWM, as it ends):

    * ``python -m eval.full_size_bench child SPEC.json OUT.json`` — one side (jax / torch): writes its JSON result
      to OUT.json and its peak RSS to OUT.json.peak;
    * ``python -m eval.full_size_bench convert PEAK_FILE -- HF_DIR OUT_DIR [vtp-convert flags]`` — runs
      ``vtp-convert`` (:func:`convert.cli.main`) in this process, returns its exit code, peak RSS to PEAK_FILE.
    """
    if argv[:1] == ["convert"]:
        if len(argv) < 3 or argv[2] != "--":
            print("usage: python -m eval.full_size_bench convert PEAK_FILE -- HF_DIR OUT_DIR [...]", file=sys.stderr)
            return 2
        from convert.cli import main as convert_main

        rc = convert_main(argv[3:])
        _write_peak(argv[1])
        return rc
    p = argparse.ArgumentParser(prog="eval.full_size_bench")
    p.add_argument("mode", choices=["child"])
    p.add_argument("spec")
    p.add_argument("out")
    a = p.parse_args(argv)
    with open(a.spec, encoding="utf-8") as f:
        spec = json.load(f)
    fn = _CHILDREN[families.get(spec["family"]).kind]
    result = fn(spec, spec["side"])
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(result, f)
    _write_peak(a.out + ".peak")
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
