"""The prepared GPU check: LLaVA-1.5-7B and LLaDA-V-8B (RANDOM weights, exact configs, bf16) on one accelerator.

Run on the device machine with ``bash eval/gpu_check.sh`` (≤ 8 minutes on one H200; every part has a time budget
and is skipped, with a note, once the budget is spent). Three parts, each its own process so the accelerator's
memory is free for the next (jax preallocates; torch's model must not share the GPU with jax's):

``python -m eval.gpu_check jax --out jax.json``
    vtp_jax on the accelerator. Models are initialised at random **on the device** (no checkpoint is written or
    converted: the weights only need the real shapes to time them). LLaVA-1.5-7B: prefill time at batch 1 and 8
    (590-token prompt: 576 visual tokens), model FLOP utilisation (MFU = analytic prefill FLOPs / time / peak bf16
    FLOP/s), decode tokens/s at batch 1 against the HBM roofline (bf16 bytes of decoder layers + head ÷ HBM
    bandwidth), and the prefill speed-ups of FastV and ToDRE at keep 25%. LLaDA-V-8B: latency of gen_length 32 /
    16 denoising steps unpruned and with RedVTP keep 50% and 25%.
``python -m eval.gpu_check torch --out torch.json``
    transformers' ``LlavaForConditionalGeneration`` in bf16 (SDPA attention) on the same prompt, random init on the
    device: prefill ms and decode tokens/s.
``python -m eval.gpu_check report jax.json torch.json``
    A Markdown table with the jax / torch ratios.

Peak figures (H200 SXM data sheet): 989 TFLOP/s dense bf16, 4.8 TB/s HBM3e; the tool's KINDS.md measured 790 TFLOP/s
for an 8192³ bf16 product in PyTorch on this machine. The fused attention takes cuDNN where the mask allows: these
prompts have no padding, so the generators call it with ``is_causal`` (LLaVA) or no mask (LLaDA-V) — see
:func:`vtp_jax.modeling.attention.mask_free_attention`; padded batches fall back to XLA's kernel.

``--tiny`` runs the same code on width-reduced configs (any backend; the test suite runs it on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

PEAK_BF16_FLOPS = 989e12  # H200 SXM dense bf16, FLOP/s
HBM_BYTES_PER_S = 4.8e12  # H200 HBM3e, bytes/s
TINY = dict(text_hidden=256, text_mlp=512, text_heads=4, text_kv_heads=4, vision_hidden=64, vision_layers=2,
            vision_mlp=128, vision_heads=4, image_size=56, patch_size=14)
LLADA_IMAGE = (768, 768)  # anyres_max_4: a 2×2 grid of 384 px tiles → 729 + 4·729 + newlines visual tokens


class Budget:
    """Wall-clock budget (seconds) shared by the parts of one process."""

    def __init__(self, seconds: float):
        self.t0, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)


def _configs(tiny: bool, layers: int | None):
    from vtp_jax.testbed import full_size

    ov = TINY if tiny else None
    return {p: full_size.preset_config(p, layers=layers, overrides=ov) for p in full_size.PRESETS}


def random_model(hf_config: dict, dtype: str = "bfloat16"):
    """A vtp_jax model of ``hf_config`` with random weights initialised on the default device (jitted init, no
    host copy). Returns (model, cfg)."""
    import jax
    from flax import nnx

    from vtp_jax import checkpoint
    from vtp_jax.config import config_from_hf

    cfg = config_from_hf(hf_config)
    cls = checkpoint.build_model_class(cfg)
    dt = checkpoint.DTYPES[dtype]
    graphdef, _ = checkpoint.abstract_model(cfg, dtype)
    state = jax.jit(lambda: nnx.state(cls(cfg, dtype=dt, rngs=nnx.Rngs(0))))()
    return nnx.merge(graphdef, state), cfg


def run_jax(args) -> dict:
    import jax

    budget = Budget(args.budget_s)
    configs = _configs(args.tiny, args.layers)
    report: dict = {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
                    "jax_version": jax.__version__, "random_weights": True, "tiny": args.tiny, "layers": args.layers,
                    "peak_bf16_flops": PEAK_BF16_FLOPS, "hbm_bytes_per_s": HBM_BYTES_PER_S, "notes": []}

    if "llava" in args.families:
        report["llava-1.5-7b"] = _llava_part(args, configs["llava-1.5-7b"], budget, report["notes"])
    if "llada_v" in args.families:
        report["llada-v-8b"] = _llada_part(args, configs["llada-v-8b"], budget, report["notes"])
    return report


def _llava_part(args, hf_config: dict, budget: Budget, notes: list) -> dict:
    from eval import bench
    from vtp_jax.generation.autoregressive import AutoregressiveGenerator
    from vtp_jax.runtime import build_method
    from vtp_jax.testbed import full_size

    t0 = time.perf_counter()
    model, cfg = random_model(hf_config)
    llava: dict = {"init_s": time.perf_counter() - t0}
    weight_bytes = full_size.decoder_weight_bytes(hf_config)
    llava["decode_weight_bytes"] = weight_bytes
    llava["roofline_tokens_per_s"] = HBM_BYTES_PER_S / weight_bytes
    n_v, n_layers = cfg.num_visual_tokens, cfg.text.num_hidden_layers
    variants = [("none", None), ("fastv-25", build_method("fastv", "llava", n_v, n_layers, keep_ratio=0.25)),
                ("todre-25", build_method("todre", "llava", n_v, n_layers, keep_ratio=0.25))]
    for batch in (1, 8):
        inputs = bench.make_inputs(cfg, batch)
        prompt_len = inputs["input_ids"].shape[1]
        for name, method in variants if batch == 1 else variants[:1]:
            key = f"{name}@b{batch}"
            if budget.left() < args.reserve_s:
                notes.append(f"llava {key}: skipped (time budget)")
                continue
            gen = AutoregressiveGenerator(model, method)
            new = args.new_tokens if batch == 1 else 2

            def once():
                out = gen.generate_arrays(inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"],
                                   max_new_tokens=new, eos_token_ids=(), pad_token_id=0)
                return out

            t1 = time.perf_counter()
            once()
            compile_s = time.perf_counter() - t1
            outs = [once() for _ in range(args.runs)]
            prefill = statistics.median(o.prefill_s for o in outs)
            row = {"compile_s": compile_s, "prefill_ms": 1e3 * prefill, "prompt_tokens": prompt_len}
            keep = getattr(method, "keep", None)
            flops = bench.method_prefill_flops(cfg, prompt_len, method, batch=batch) + bench.vision_flops(cfg, batch)
            row["prefill_flops"] = flops
            row["mfu"] = flops / prefill / PEAK_BF16_FLOPS
            if batch == 1:
                row["decode_tokens_per_s"] = statistics.median(o.tokens_per_s for o in outs)
                row["decode_vs_roofline"] = row["decode_tokens_per_s"] / llava["roofline_tokens_per_s"]
            row["kept_visual"] = keep if keep is not None else n_v
            llava[key] = row
            del gen
    base = llava.get("none@b1", {}).get("prefill_ms")
    for name, _ in variants[1:]:
        row = llava.get(f"{name}@b1")
        if row and base:
            row["prefill_speedup"] = base / row["prefill_ms"]
    return llava


def _llada_part(args, hf_config: dict, budget: Budget, notes: list) -> dict:
    from eval import bench
    from vtp_jax.generation.diffusion import DiffusionConfig, DiffusionGenerator
    from vtp_jax.runtime import build_method
    from vtp_jax.testbed import full_size

    llada: dict = {}
    if budget.left() < args.reserve_s:
        notes.append("llada-v-8b: skipped (time budget)")
    else:
        t0 = time.perf_counter()
        model, cfg = random_model(hf_config)
        llada["init_s"] = time.perf_counter() - t0
        image = (112, 112) if args.tiny else LLADA_IMAGE
        inputs = bench.make_llada_inputs(model, image)
        n_v = inputs["num_visual"]
        llada["num_visual"], llada["prompt_tokens"] = n_v, int(inputs["input_ids"].shape[1])
        dcfg = DiffusionConfig(gen_length=32, block_length=32, steps=16, mask_id=cfg.mask_token_id,
                               suppress_ids=full_size.LLADA_SUPPRESS_IDS)
        n_layers = cfg.text.num_hidden_layers
        for name, spec, ratio in (("none", None, None), ("redvtp-50", "redvtp", 0.5), ("redvtp-25", "redvtp", 0.25)):
            if budget.left() < args.reserve_s:
                notes.append(f"llada-v {name}: skipped (time budget)")
                continue
            method = None if spec is None else build_method(spec, "llada_v", n_v, n_layers, keep_ratio=ratio)
            gen = DiffusionGenerator(model, dcfg, method)
            image_inputs = {"pixel_values": inputs["pixel_values"], "image_size": inputs["image_size"]}
            t1 = time.perf_counter()
            gen.generate_arrays(inputs["input_ids"], inputs["attention_mask"], image_inputs)
            compile_s = time.perf_counter() - t1
            lat = []
            for _ in range(args.runs):
                out = gen.generate_arrays(inputs["input_ids"], inputs["attention_mask"], image_inputs)
                lat.append(out.encode_s + out.denoise_s)
            row = {"compile_s": compile_s, "latency_ms": 1e3 * statistics.median(lat),
                   "tokens_per_s": dcfg.gen_length / statistics.median(lat)}
            llada[name] = row
            del gen
        base = llada.get("none", {}).get("latency_ms")
        for name in ("redvtp-50", "redvtp-25"):
            if base and "latency_ms" in llada.get(name, {}):
                llada[name]["speedup"] = base / llada[name]["latency_ms"]
    return llada


def run_torch(args) -> dict:
    import torch
    import transformers

    from eval import bench
    from vtp_jax.config import config_from_hf

    hf = _configs(args.tiny, args.layers)["llava-1.5-7b"]
    cfg = config_from_hf(hf)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_default_dtype(torch.bfloat16)
    t0 = time.perf_counter()
    with torch.device(device):
        model = transformers.LlavaForConditionalGeneration(transformers.LlavaConfig.from_dict(hf)).eval()
    init_s = time.perf_counter() - t0
    inputs = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in bench.make_inputs(cfg, 1).items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    n = args.new_tokens

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def prefill():
        with torch.inference_mode():
            sync()
            t = time.perf_counter()
            model(**inputs, use_cache=True, logits_to_keep=1)
            sync()
            return time.perf_counter() - t

    def generate():
        with torch.inference_mode():
            sync()
            t = time.perf_counter()
            model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
            sync()
            return time.perf_counter() - t

    prefill(), generate()  # warm-up
    pre = statistics.median(prefill() for _ in range(args.runs))
    gen = statistics.median(generate() for _ in range(args.runs))
    return {"device": device, "torch_version": torch.__version__, "transformers_version": transformers.__version__,
            "random_weights": True, "init_s": init_s, "prefill_ms": 1e3 * pre,
            "decode_tokens_per_s": (n - 1) / max(gen - pre, 1e-9), "new_tokens": n,
            "attn_implementation": getattr(model.config, "_attn_implementation", None)}


def format_report(jax_report: dict, torch_report: dict | None) -> str:
    """Markdown summary of the two JSON reports (ratios jax / torch)."""
    lines = [f"GPU check — RANDOM weights — backend {jax_report.get('backend')} {jax_report.get('devices')}", ""]
    llava = jax_report.get("llava-1.5-7b", {})
    lines += ["| LLaVA-1.5-7B bf16 | prefill ms | MFU | decode tokens/s | of HBM roofline | prefill speed-up |",
              "| --- | --- | --- | --- | --- | --- |"]
    for key, row in llava.items():
        if not isinstance(row, dict):
            continue
        dec = row.get("decode_tokens_per_s")
        lines.append(f"| jax {key} | {row['prefill_ms']:.1f} | {row['mfu']:.1%} | "
                     f"{'' if dec is None else f'{dec:.1f}'} | "
                     f"{'' if dec is None else format(row['decode_vs_roofline'], '.0%')} | "
                     f"{row.get('prefill_speedup', '') and format(row.get('prefill_speedup'), '.2f') + '×'} |")
    if torch_report:
        lines.append(f"| transformers bf16 b1 | {torch_report['prefill_ms']:.1f} | | "
                     f"{torch_report['decode_tokens_per_s']:.1f} | | |")
        jb = llava.get("none@b1")
        if jb:
            lines += ["", f"jax / transformers: prefill {torch_report['prefill_ms'] / jb['prefill_ms']:.2f}× faster, "
                      f"decode {jb['decode_tokens_per_s'] / torch_report['decode_tokens_per_s']:.2f}×"]
    lines.append(f"HBM roofline (decode, batch 1): {llava.get('roofline_tokens_per_s', 0):.0f} tokens/s")
    llada = jax_report.get("llada-v-8b", {})
    if llada:
        lines += ["", "| LLaDA-V-8B bf16, gen 32 / 16 steps | latency ms | tokens/s | speed-up |", "| --- | --- | --- | --- |"]
        for key in ("none", "redvtp-50", "redvtp-25"):
            row = llada.get(key, {})
            if "latency_ms" in row:
                lines.append(f"| jax {key} | {row['latency_ms']:.0f} | {row['tokens_per_s']:.1f} | "
                             f"{row.get('speedup', 1.0):.2f}× |")
    for note in jax_report.get("notes", []):
        lines.append(f"- {note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.gpu_check", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="part", required=True)
    for name in ("jax", "torch"):
        s = sub.add_parser(name)
        s.add_argument("--out", required=True, help="JSON report path")
        s.add_argument("--tiny", action="store_true", help="width-reduced configs (a smoke run on any backend)")
        s.add_argument("--layers", type=int, default=None, help="decoder depth (default: the real 32)")
        s.add_argument("--runs", type=int, default=3, help="timed runs per variant (medians)")
        s.add_argument("--new-tokens", type=int, default=64, help="tokens generated per LLaVA run")
        s.add_argument("--budget-s", type=float, default=330.0, help="wall-clock budget of this part, seconds")
        s.add_argument("--reserve-s", type=float, default=45.0, help="skip a variant when less than this is left")
        s.add_argument("--families", default="llava,llada_v", help="jax part: which models (llava, llada_v)")
    r = sub.add_parser("report")
    r.add_argument("jax_json")
    r.add_argument("torch_json", nargs="?")
    args = p.parse_args(argv)
    if args.part == "report":
        with open(args.jax_json) as f:
            jr = json.load(f)
        tr = None
        if args.torch_json and os.path.exists(args.torch_json):
            with open(args.torch_json) as f:
                tr = json.load(f)
        print(format_report(jr, tr))
        return 0
    if args.runs < 1 or args.new_tokens < 2 or (args.layers is not None and not 1 <= args.layers <= 32):
        p.error("--runs ≥ 1, --new-tokens ≥ 2, --layers in [1, 32]")
    args.families = [f.strip() for f in args.families.split(",")]
    if not set(args.families) <= {"llava", "llada_v"}:
        p.error(f"--families: choose from llava, llada_v (got {args.families})")
    report = run_jax(args) if args.part == "jax" else run_torch(args)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
