"""``vtp-bench``: speed of LLaVA generation — transformers (PyTorch) vs vtp_jax, unpruned and with FastV.

**The weights are RANDOM.** The benchmark writes a random-weight LLaVA-1.5 checkpoint in Hugging Face format
(:func:`vtp_jax.testbed.hf_llava.write_random_llava`), converts it with :func:`convert.convert` and loads it with
:func:`vtp_jax.checkpoint.load`. It measures speed only; the generated text is meaningless.

Everything happens in one process and one run:

1. Build the checkpoint (preset ``tiny`` by default: CLIP 4 layers × 256 hidden at 224 px / patch 14 → 256 visual
   tokens; Llama 8 layers × 512 hidden, 8 heads, MLP 1376, vocab 512) in a temporary directory.
2. A fixed prompt, built from ids directly (no tokenizer): ``bos`` + 5 text ids + N_v image tokens + 8 text ids,
   repeated over the batch; pixel values are random float32 [B, 3, H, W]; attention mask all ones (no padding).
3. For each variant — ``torch`` (transformers ``LlavaForConditionalGeneration``, fp32, eval mode, default
   ``torch.get_num_threads()`` unless ``--torch-threads``), ``jax none``, ``jax fastv-50`` and ``jax fastv-25``
   (FastV keep 50 % / 25 % of the visual tokens at decoder layer K = 2) — ``--warmup`` untimed runs, then
   ``--runs`` timed runs; medians are reported (and, as "best of runs", the minimum prefill time and maximum
   decode rate). The variants are interleaved run by run (round robin) so that background load hits them alike.
   The share of CPU time taken by *other* processes is measured (from ``/proc/stat``) in the second before the
   benchmark and during the timed runs, and a warning is printed above 10 %: on a machine shared with other jobs
   the timings are noisy, and torch's OpenMP thread team suffers most (a parallel region waits for its slowest
   thread, so one descheduled thread stalls every op).

Measurements (units):

* **prefill ms** — wall time of the prefill in milliseconds: vision tower + projector + decoder over the whole prompt
  + logits of the last position + the first token. torch: one ``model(..., use_cache=True, logits_to_keep=1)``
  forward under ``torch.inference_mode()``. jax: ``GenerationOutput.prefill_s`` (the jitted prefill; compilation
  happens in the warm-up and is reported separately as ``compile_s``).
* **decode tokens/s** — tokens produced by the decode loop (``max_new_tokens − 1`` per row, summed over the batch)
  per second of decode time. torch: ``generate(max_new_tokens=N, min_new_tokens=N, do_sample=False)`` wall time
  minus the prefill inside that same call (which ends when the first logits reach the logits processors; see
  :class:`TorchRunner`). jax: ``GenerationOutput.tokens_per_s`` (the jitted
  ``lax.while_loop``). EOS never stops a run early (jax: ``eos_token_ids=()``; torch: ``min_new_tokens=N``), so
  every run decodes exactly N tokens; this is checked.

Analytic FLOPs of the prefill (one multiply-add = 2 FLOPs; batch B, every product counted densely):

* LLM decoder layer over T tokens: ``2·T·P_layer + 4·T²·H·d_h`` with
  ``P_layer = D·H·d_h + 2·D·KV·d_h + H·d_h·D + 3·D·F`` (q, k, v, o projections and the SwiGLU MLP), H heads,
  KV key/value heads, head dim d_h, hidden D, MLP width F; the attention term counts Q·Kᵀ and P·V over the full
  T×T score matrix (what the dense kernel computes; the causal mask does not halve it). Norms, RoPE, softmax and
  residual adds are ignored (O(T·D)).
* LLM prefill: ``B · (Σ_layers layer(T_l) + 2·D·V)`` — T_l = T for the layers before FastV's K and
  ``T − N_v + keep`` from layer K on; ``2·D·V`` is the LM head on the last position only. FastV's probe (one
  attention row at layer K − 1) and top-k are O(T·D) and ignored.
* Vision + projector (the same for every variant):
  ``B · (2·N_p·C·p²·D_v + Σ_run-layers [2·S·(4·D_v² + 2·D_v·F_v) + 4·S²·D_v] + 2·N_v·(D_v·n_f·D + D·D))``
  with N_p patches, S = N_p (+1 class token) positions, n_f concatenated feature layers, and only the
  layers up to the selected feature layer counted (vtp_jax runs just those; transformers' CLIP runs them all, so
  torch does one extra vision layer for the default ``vision_feature_layer = −2``).

Targets (reported PASS / MISS): decode tokens/s jax none / torch ≥ 3×; prefill speed-up of FastV keep 25 % over
jax none ≥ 1.5×.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

RANDOM_WEIGHTS_NOTE = "RANDOM WEIGHTS: speed only, the generated text is meaningless"

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

PREFIX_TEXT, SUFFIX_TEXT = 5, 8  # text ids before / after the image tokens in the prompt
FASTV_KEEPS = ((50, 0.5), (25, 0.25))  # (label %, fraction of N_v)
TARGET_DECODE_VS_TORCH = 3.0
TARGET_FASTV25_PREFILL = 1.5
FOREIGN_LOAD_WARN = 0.1  # share of all CPU time used by other processes above which timings are flagged


class BenchError(ValueError):
    """Bad benchmark settings (reported as ``vtp-bench: error: ...``, exit code 2)."""


# ---------------------------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------------------------

def llm_layer_flops(text, tokens: int) -> int:
    """FLOPs of one decoder layer over ``tokens`` positions (batch 1): ``2·T·P_layer + 4·T²·H·d_h``."""
    d, f, h, kv, hd = (text.hidden_size, text.intermediate_size, text.num_attention_heads,
                       text.num_key_value_heads, text.head_dim)
    p_layer = d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * f
    return 2 * tokens * p_layer + 4 * tokens * tokens * h * hd


def llm_prefill_flops(cfg, prompt_len: int, *, keep: int | None = None, layer: int = 2, batch: int = 1) -> int:
    """FLOPs of the LLM part of the prefill (decoder layers + last-position LM head), FastV if ``keep`` is given."""
    text = cfg.text
    short = prompt_len - cfg.num_visual_tokens + keep if keep is not None else prompt_len
    per_layer = [prompt_len if (keep is None or i < layer) else short for i in range(text.num_hidden_layers)]
    total = sum(llm_layer_flops(text, t) for t in per_layer) + 2 * text.hidden_size * text.vocab_size
    return batch * total


def vision_flops(cfg, batch: int = 1) -> int:
    """FLOPs of patch embedding + the vision layers vtp_jax runs + the projector (identical for every variant)."""
    v = cfg.vision
    n_p = v.num_patches
    s = v.num_positions
    layers_run = max(layer % (v.num_hidden_layers + 1) for layer in cfg.vision_feature_layer)
    patch = 2 * n_p * v.num_channels * v.patch_size**2 * v.hidden_size
    per_layer = 2 * s * (4 * v.hidden_size**2 + 2 * v.hidden_size * v.intermediate_size) + 4 * s * s * v.hidden_size
    d = cfg.text.hidden_size
    proj = 2 * cfg.num_visual_tokens * (v.hidden_size * len(cfg.vision_feature_layer) * d + d * d)
    return batch * (patch + layers_run * per_layer + proj)


# ---------------------------------------------------------------------------------------------------------------
# Inputs and checkpoint
# ---------------------------------------------------------------------------------------------------------------

def make_inputs(cfg, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Fixed prompt ids int64 [B, T] (bos, 5 text ids, N_v image ids, 8 text ids), mask int64 ones [B, T],
    pixel values float32 [B, 3, H, W] ~ N(0, 1)."""
    from vtp_jax.testbed.hf_llava import BOS_ID, SPECIAL_TOKENS

    rng = np.random.default_rng(seed)
    first_text = len(SPECIAL_TOKENS)  # ordinary ids start after <unk> <s> </s> <pad> <image>
    text = rng.integers(first_text, cfg.text.vocab_size, size=PREFIX_TEXT + SUFFIX_TEXT)
    row = ([BOS_ID] + text[:PREFIX_TEXT].tolist() + [cfg.image_token_id] * cfg.num_visual_tokens
           + text[PREFIX_TEXT:].tolist())
    ids = np.tile(np.asarray(row, np.int64), (batch, 1))
    v = cfg.vision
    pixels = rng.standard_normal((batch, v.num_channels, v.image_size, v.image_size)).astype(np.float32)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "pixel_values": pixels}


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


# ---------------------------------------------------------------------------------------------------------------
# Runners: warmup() runs untimed; run() times one generation → {"prefill_s", "decode_s", ...} (seconds).
# ---------------------------------------------------------------------------------------------------------------

class JaxRunner:
    """vtp_jax ``AutoregressiveGenerator`` for one pruning method (None = unpruned)."""

    def __init__(self, model, method, inputs: dict, max_new_tokens: int, pad_id: int):
        from vtp_jax.generation.autoregressive import AutoregressiveGenerator

        self.gen = AutoregressiveGenerator(model, method)
        self.inputs, self.n, self.pad_id = inputs, max_new_tokens, pad_id
        self.compile_s: float | None = None  # wall time of the first call (compilation + one run), seconds
        self.last_tokens: np.ndarray | None = None

    def run(self) -> dict:
        out = self.gen.generate(
            self.inputs["input_ids"], self.inputs["attention_mask"], self.inputs["pixel_values"],
            max_new_tokens=self.n, eos_token_ids=(), pad_token_id=self.pad_id, temperature=0.0,
        )
        if out.tokens.shape[1] != self.n or any(c != self.n for c in out.num_new_tokens):
            raise RuntimeError(f"jax run decoded {out.num_new_tokens} tokens, expected {self.n} per row")
        self.last_tokens = np.asarray(out.tokens)
        return {"prefill_s": out.prefill_s, "decode_s": out.decode_s, "tokens_per_s": out.tokens_per_s}

    def warmup(self) -> None:
        t0 = time.perf_counter()
        self.run()
        if self.compile_s is None:
            self.compile_s = time.perf_counter() - t0


class TorchRunner:
    """transformers ``LlavaForConditionalGeneration`` (fp32, eval). torch is imported here only.

    Decode time of a ``generate`` call = its total wall time minus its own prefill, where the prefill ends when the
    first logits reach the logits processors (a time stamp taken by a pass-through processor, called once per new
    token, the first time right after the prompt's forward pass). This subtracts the prefill of the same call, so a
    disturbed run cannot yield a negative or inflated decode time. For reference the report also holds the decode
    time computed as generate time minus the median stand-alone prefill (``decode_s_by_subtraction``).
    """

    def __init__(self, hf_dir: str, inputs: dict, max_new_tokens: int, pad_id: int, threads: int | None = None):
        import torch
        from transformers import LlavaForConditionalGeneration, LogitsProcessor, LogitsProcessorList

        if threads is not None:
            torch.set_num_threads(threads)
        self.torch = torch
        self.model = LlavaForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()
        self.inputs = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}
        self.n, self.pad_id = max_new_tokens, pad_id
        self.runs: list[dict] = []
        self.last_tokens: np.ndarray | None = None
        self.info = {"torch_version": torch.__version__, "torch_num_threads": torch.get_num_threads()}
        stamps: list[float] = []

        class Stamp(LogitsProcessor):
            def __call__(self, input_ids, scores):
                stamps.append(time.perf_counter())
                return scores

        self.stamps, self.processors = stamps, LogitsProcessorList([Stamp()])

    def _prefill(self) -> float:
        with self.torch.inference_mode():
            t0 = time.perf_counter()
            self.model(**self.inputs, use_cache=True, logits_to_keep=1)
            return time.perf_counter() - t0

    def _generate(self) -> tuple[float, float]:
        """(total seconds, seconds from the first logits to the end = the N − 1 decode steps)."""
        self.stamps.clear()
        with self.torch.inference_mode():
            t0 = time.perf_counter()
            out = self.model.generate(
                **self.inputs, max_new_tokens=self.n, min_new_tokens=self.n, do_sample=False,
                pad_token_id=self.pad_id, use_cache=True, logits_processor=self.processors,
            )
            t1 = time.perf_counter()
        new = out[:, self.inputs["input_ids"].shape[1]:]
        if new.shape[1] != self.n or len(self.stamps) != self.n:
            raise RuntimeError(f"torch generate produced {new.shape[1]} tokens ({len(self.stamps)} steps), "
                               f"expected {self.n}")
        self.last_tokens = new.numpy()
        return t1 - t0, t1 - self.stamps[0]

    def warmup(self) -> None:
        self._prefill()
        self._generate()

    def run(self) -> dict:
        p = self._prefill()
        total, dec = self._generate()
        self.runs.append({"prefill_s": p, "generate_s": total, "decode_s": dec})
        return self.runs[-1]

    def finalize(self, batch: int) -> list[dict]:
        """Per run: tokens/s = B·(N − 1) / decode_s; adds ``decode_s_by_subtraction`` (see the class doc)."""
        pre = statistics.median(r["prefill_s"] for r in self.runs)
        return [{**r, "tokens_per_s": batch * (self.n - 1) / r["decode_s"],
                 "decode_s_by_subtraction": r["generate_s"] - pre} for r in self.runs]


# ---------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vtp-bench", description=__doc__.splitlines()[0].split(": ", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=RANDOM_WEIGHTS_NOTE + ".")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="model size (default tiny)")
    for key in PRESETS["tiny"]:
        p.add_argument("--" + key.replace("_", "-"), type=int, default=None, help=f"override the preset's {key}")
    p.add_argument("--runs", type=int, default=5, help="timed runs per variant; medians are reported (default 5)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed runs per variant before timing (≥ 1 for jax: the first call compiles; default 1)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per run (default 32)")
    p.add_argument("--batch", type=int, default=1, help="batch size (the prompt repeated; default 1)")
    p.add_argument("--fastv-layer", type=int, default=2, help="FastV decoder layer K (default 2)")
    p.add_argument("--no-torch", action="store_true", help="skip the transformers / PyTorch baseline")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch.set_num_threads for the baseline (default: torch's own default, left untouched)")
    p.add_argument("--json", metavar="PATH", help="write every setting and measurement as JSON to PATH")
    p.add_argument("--quiet", action="store_true", help="print only the final report")
    return p


def _loadavg() -> float | None:
    """1-minute load average (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) clock ticks summed over all CPUs since boot, from /proc/stat (None where unavailable)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest time is inside user)
    return total - idle, total


class ForeignLoad:
    """Share of the machine's CPU time used by *other* processes over an interval: (all busy CPU time − this
    process's CPU time) / (wall time × CPUs), in [0, 1]; None where /proc/stat is unavailable."""

    def __init__(self):
        self.j0, self.c0, self.w0 = _cpu_jiffies(), time.process_time(), time.perf_counter()

    def share(self) -> float | None:
        j1 = _cpu_jiffies()
        if self.j0 is None or j1 is None:
            return None
        hz = os.sysconf("SC_CLK_TCK")
        busy = (j1[0] - self.j0[0]) / hz
        wall_cpu = (j1[1] - self.j0[1]) / hz  # wall time × CPUs, as the kernel counts it
        own = time.process_time() - self.c0
        return min(max((busy - own) / wall_cpu, 0.0), 1.0) if wall_cpu > 0 else None


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if (a is not None and b is not None and b > 0) else None


def _pct(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def _fmt(x: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if x is None else format(x, spec) + suffix


def run_bench(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
    """Runs the benchmark and returns the JSON-able report (see the module docstring for units)."""
    import jax

    from vtp_jax.checkpoint import load
    from vtp_jax.pruning.fastv import FastV
    from vtp_jax.testbed.hf_llava import PAD_ID, tiny_llava_config

    if args.runs < 1 or args.warmup < 0 or args.max_new_tokens < 2 or args.batch < 1:
        raise BenchError("need --runs ≥ 1, --warmup ≥ 0, --max-new-tokens ≥ 2, --batch ≥ 1")
    load_start = _loadavg()
    probe = ForeignLoad()
    time.sleep(1.0)
    busy_before = probe.share()
    model_kwargs = dict(PRESETS[args.preset])
    for key in model_kwargs:
        if getattr(args, key, None) is not None:
            model_kwargs[key] = getattr(args, key)
    n_layers = model_kwargs["text_layers"]
    if not 1 <= args.fastv_layer < n_layers:
        raise BenchError(f"--fastv-layer must be in [1, {n_layers - 1}] for a {n_layers}-layer decoder, "
                         f"got {args.fastv_layer}")
    hf_config = tiny_llava_config(vision_feature_select_strategy="default", **model_kwargs)

    log("=" * 100)
    log(f"vtp-bench — {RANDOM_WEIGHTS_NOTE.upper()}")
    log("=" * 100)
    if (busy_before or 0.0) > FOREIGN_LOAD_WARN:
        log(f"WARNING: other processes used {100 * busy_before:.0f} % of the CPUs in the second before the benchmark: "
            "timings will be noisy (torch's multi-threaded ops most of all)")
    report: dict[str, Any] = {"random_weights": True, "note": RANDOM_WEIGHTS_NOTE, "preset": args.preset,
                              "model": model_kwargs}

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
        report["env"] = {
            "jax_version": jax.__version__, "platform": device.platform, "device_kind": device.device_kind,
            "jax_device_count": jax.device_count(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "machine": platform.machine(), "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
            "loadavg_start": load_start, "foreign_cpu_share_before": busy_before,
        }
        report["settings"] = {"runs": args.runs, "warmup": args.warmup, "max_new_tokens": n, "batch": args.batch,
                              "prompt_len": prompt_len, "num_visual_tokens": n_v, "fastv_layer": args.fastv_layer}
        log(f"model: CLIP {cfg.vision.num_hidden_layers}L×{cfg.vision.hidden_size} @ {cfg.vision.image_size}px/"
            f"{cfg.vision.patch_size} → {n_v} visual tokens; Llama {cfg.text.num_hidden_layers}L×"
            f"{cfg.text.hidden_size} ({cfg.text.num_attention_heads} heads, MLP {cfg.text.intermediate_size}, "
            f"vocab {cfg.text.vocab_size})")
        log(f"prompt: {prompt_len} tokens × batch {args.batch}; {n} new tokens per run; "
            f"{args.warmup} warm-up + {args.runs} timed runs per variant")
        log(f"jax {jax.__version__} on {device.platform} ({device.device_kind}), {os.cpu_count()} CPUs")

        # Variants: name → runner (torch first when present); LLM prefill FLOPs per variant.
        variants: dict[str, Any] = {}
        flops = {"vision_and_projector": vision_flops(cfg, args.batch)}
        keeps: dict[str, int | None] = {"jax none": None}
        for label, frac in FASTV_KEEPS:
            keeps[f"jax fastv-{label}"] = max(1, round(n_v * frac))
        for name, keep in keeps.items():
            method = None if keep is None else FastV(keep=keep, layer=args.fastv_layer)
            variants[name] = JaxRunner(model, method, inputs, n, PAD_ID)
            flops[name] = llm_prefill_flops(cfg, prompt_len, keep=keep, layer=args.fastv_layer, batch=args.batch)
        flops["torch"] = flops["jax none"]

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
        report["env"]["loadavg_end"] = _loadavg()
        report["env"]["foreign_cpu_share_during_runs"] = during.share()
        report["raw_runs"] = raw

    # Aggregate.
    rows: dict[str, dict] = {}
    for name, runs in raw.items():
        runner = variants[name]
        keep = keeps.get(name, None)
        llm_tokens = prompt_len if keep is None else prompt_len - n_v + keep
        rows[name] = {
            "prefill_ms": 1e3 * _median([x["prefill_s"] for x in runs]),
            "decode_tokens_per_s": _median([x["tokens_per_s"] for x in runs]),
            "decode_ms_per_step": 1e3 * _median([x["decode_s"] for x in runs]) / (n - 1),
            "prefill_ms_min": 1e3 * min(x["prefill_s"] for x in runs),
            "decode_tokens_per_s_max": max(x["tokens_per_s"] for x in runs),
            "prefill_ms_runs": [1e3 * x["prefill_s"] for x in runs],
            "decode_tokens_per_s_runs": [x["tokens_per_s"] for x in runs],
            "visual_tokens_kept": n_v if keep is None else keep,
            "llm_tokens_after_pruning": llm_tokens,
            "llm_prefill_flops": flops[name],
            "prefill_flops": flops[name] + flops["vision_and_projector"],
            "compile_s": getattr(runner, "compile_s", None),
        }
    base = rows["jax none"]
    torch_row = rows.get("torch")
    for name, row in rows.items():
        row["prefill_speedup_vs_jax_none"] = _ratio(base["prefill_ms"], row["prefill_ms"])
        row["decode_x_torch"] = (_ratio(row["decode_tokens_per_s"], torch_row["decode_tokens_per_s"])
                                 if torch_row else None)
        row["llm_flop_ratio_vs_jax_none"] = _ratio(base["llm_prefill_flops"], row["llm_prefill_flops"])
        row["prefill_flop_ratio_vs_jax_none"] = _ratio(base["prefill_flops"], row["prefill_flops"])

    # Greedy agreement between torch and jax (sanity check that both compute the same model; info only).
    agreement = None
    if torch_row is not None:
        a, b = variants["torch"].last_tokens, variants["jax none"].last_tokens
        same = (a == b).all(axis=0)
        agreement = int(np.argmin(same)) if not same.all() else int(same.size)

    decode_x = base["decode_x_torch"]
    fastv25 = rows["jax fastv-25"]["prefill_speedup_vs_jax_none"]
    decode_x_best = _ratio(base["decode_tokens_per_s_max"], torch_row["decode_tokens_per_s_max"]) if torch_row else None
    fastv25_best = _ratio(base["prefill_ms_min"], rows["jax fastv-25"]["prefill_ms_min"])
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
                                    "llm_flop_ratio": rows["jax fastv-25"]["llm_flop_ratio_vs_jax_none"],
                                    "prefill_flop_ratio": rows["jax fastv-25"]["prefill_flop_ratio_vs_jax_none"],
                                    "status": "PASS" if fastv25 >= TARGET_FASTV25_PREFILL else "MISS"},
    }
    return report


def format_report(report: dict) -> str:
    """The human-readable table and target lines."""
    rows, env, s = report["rows"], report["env"], report["settings"]
    lines = ["", "#" * 100, f"# {RANDOM_WEIGHTS_NOTE.upper()}", "#" * 100,
             f"jax {env['jax_version']} · device {env['platform']} ({env['device_kind']}) · {env['cpu_count']} CPUs"
             + (f" · torch {env['torch_version']} ({env['torch_num_threads']} threads)"
                if "torch_version" in env else ""),
             f"prompt {s['prompt_len']} tokens ({s['num_visual_tokens']} visual) × batch {s['batch']}, "
             f"{s['max_new_tokens']} new tokens, medians of {s['runs']} runs, FastV K = {s['fastv_layer']}",
             f"CPU share used by other processes: {_fmt(_pct(env.get('foreign_cpu_share_before')), '.0f', ' %')} "
             f"just before, {_fmt(_pct(env.get('foreign_cpu_share_during_runs')), '.0f', ' %')} during the timed runs"
             f" (1-min load average {_fmt(env.get('loadavg_start'), '.2f')} → {_fmt(env.get('loadavg_end'), '.2f')})",
             ""]
    if (env.get("foreign_cpu_share_during_runs") or 0.0) > FOREIGN_LOAD_WARN:
        lines[-1:-1] = ["WARNING: other processes competed for the CPUs during the timed runs; the timings (torch's "
                        "above all) are not representative of an idle machine and PASS / MISS is unreliable"]
    header = (f"{'variant':<14}{'kept':>6}{'prefill ms':>12}{'decode tok/s':>14}{'prefill ×':>11}"
              f"{'decode ×torch':>15}{'LLM GFLOP':>11}{'FLOP ×':>8}{'compile s':>11}")
    lines += [header, "-" * len(header)]
    for name, r in rows.items():
        lines.append(
            f"{name:<14}{r['visual_tokens_kept']:>6}{r['prefill_ms']:>12.1f}{r['decode_tokens_per_s']:>14.1f}"
            f"{_fmt(r['prefill_speedup_vs_jax_none'], '.2f', '×'):>11}{_fmt(r['decode_x_torch'], '.2f', '×'):>15}"
            f"{r['llm_prefill_flops'] / 1e9:>11.2f}{_fmt(r['llm_flop_ratio_vs_jax_none'], '.2f', '×'):>8}"
            f"{_fmt(r['compile_s'], '.1f'):>11}"
        )
    lines.append(f"(prefill × = speed-up over jax none; FLOP × = LLM prefill FLOP ratio jax none / variant; vision + "
                 f"projector add {report['flops']['vision_and_projector'] / 1e9:.2f} GFLOP to every prefill)")
    lines.append("best of runs (least disturbed by other processes): " + "; ".join(
        f"{name} {r['prefill_ms_min']:.1f} ms / {r['decode_tokens_per_s_max']:.1f} tok/s" for name, r in rows.items()))
    if report["torch_skipped"]:
        lines.append(f"torch baseline skipped: {report['torch_skipped']}")
    elif report["torch_jax_greedy_agreement_tokens"] is not None:
        lines.append(f"greedy tokens torch vs jax none: first {report['torch_jax_greedy_agreement_tokens']} of "
                     f"{s['max_new_tokens']} identical (sanity check)")
    t = report["targets"]
    d, f = t["decode_jax_over_torch"], t["fastv25_prefill_speedup"]
    mark = "" if t["reliable"] else " (unreliable: CPUs shared with other processes)"
    lines += ["",
              f"decode tokens/s jax / torch:          {_fmt(d['value'], '.2f', '×'):>8}  "
              f"(target ≥ {d['target']}×)  "
              f"{d['status']}{mark if d['status'] != 'SKIPPED' else ''}   [best of runs: {_fmt(d['value_best_of_runs'], '.2f', '×')}]",
              f"FastV keep 25% prefill speed-up:      {_fmt(f['value'], '.2f', '×'):>8}  "
              f"(target ≥ {f['target']}×)  "
              f"{f['status']}{mark}   [best of runs: {_fmt(f['value_best_of_runs'], '.2f', '×')}; FLOP ratio: LLM "
              f"{f['llm_flop_ratio']:.2f}×, whole prefill {f['prefill_flop_ratio']:.2f}×]",
              ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Console entry point. Returns 0 (targets missed is not an error), 2 on bad arguments."""
    args = _parser().parse_args(argv)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    try:
        report = run_bench(args, log)
    except BenchError as e:
        print(f"vtp-bench: error: {e}", file=sys.stderr)
        return 2
    print(format_report(report), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
