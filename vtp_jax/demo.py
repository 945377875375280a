"""``make demo``: the main job end to end on a real photograph.

Part A — LLaVA (autoregressive):
1. Builds a small LLaVA-1.5-architecture checkpoint with RANDOM weights in real Hugging Face format
   (config via transformers, tokenizer trained with ``tokenizers``, CLIP image-processor config, chat template).
2. Converts it with ``vtp-convert`` (the real CLI).
3. Runs ``vtp-generate`` on a real photograph shipped by scikit-image (``skimage.data.chelsea``, a cat, 451×300),
   unpruned and with FastV keeping 25% of the visual tokens, and prints both outputs, the kept count and the prefill
   speed-up.

Part B — LLaDA-V (masked diffusion):
4. Builds a small LLaDA-V-architecture checkpoint with RANDOM weights in LLaDA-V's on-disk format
   (:mod:`vtp_jax.testbed.hf_llada_v`): SigLIP-style tower on 96 px tiles (patch 8 → 12×12 = 144 features per tile),
   anyres_max_4 tiling with grid pinpoints up to 2×2, a 6-layer × 320-hidden bidirectional LLaDA decoder. The
   photograph (300×451) selects the 2×2 grid; after spatial unpadding it gives 144 + 16·(24 + 1) = 544 visual
   tokens, about 95% of the prompt.
5. Converts it with ``vtp-convert`` and runs ``vtp-generate`` unpruned and with ``--method redvtp`` (keep 50%),
   printing both outputs, the kept count, the token-throughput gain and the latency reduction.

The weights are random: the generated text is meaningless by design; the point is the pipeline and the speed.
Timings are medians of several runs after a warm-up (compilation excluded), on whatever CPU runs the demo.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys


def _bin(name: str) -> str:
    """The console script next to this interpreter (inside the venv)."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    return path if os.path.exists(path) else name


def _run(cmd: list[str]) -> str:
    print("$ " + " ".join(cmd), flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stderr)
        raise SystemExit(f"demo: command failed with exit code {res.returncode}: {' '.join(cmd)}")
    return res.stdout


# Part B sizes: chosen so the photograph gives several hundred visual tokens (they dominate the sequence) while
# each denoising run stays around a second on two CPU cores.
LLADA_V_SIZES = dict(
    image_size=96, patch_size=8, vision_hidden=192, vision_layers=4, vision_heads=4, vision_mlp=768,
    text_hidden=320, text_layers=6, text_heads=5, text_kv_heads=5, text_mlp=864, vocab_size=512,
    max_position_embeddings=1024, max_grid=2, max_num_patches=4,
)


def _generate(jax_dir: str, image: str, prompt: str, extra: list[str]) -> dict:
    """One ``vtp-generate --json`` call → its result dict."""
    return json.loads(_run([_bin("vtp-generate"), "--model", jax_dir, "--image", image, "--prompt", prompt,
                            "--json", *extra]))


def demo_llava(out: str, image: str, prompt: str, max_new_tokens: int) -> None:
    """Part A: LLaVA, unpruned vs FastV keep 25% (prefill speed-up)."""
    from vtp_jax.testbed.hf_llava import build_tiny_llava

    hf_dir, jax_dir = os.path.join(out, "hf_llava_random"), os.path.join(out, "llava_jax")
    print("== A1. building a small LLaVA-architecture checkpoint with RANDOM weights (HF format) ==")
    build_tiny_llava(
        hf_dir, image_size=224, patch_size=14, vision_hidden=256, vision_layers=4, vision_heads=4, vision_mlp=1024,
        text_hidden=512, text_layers=8, text_heads=8, text_kv_heads=8, text_mlp=1376, vocab_size=512,
    )
    print("== A2. converting with vtp-convert ==")
    print(_run([_bin("vtp-convert"), hf_dir, jax_dir]).strip() or f"converted → {jax_dir}")

    print("== A3. LLaVA: generating on a real photograph (skimage.data.chelsea) ==")
    results = {}
    for label, extra in (("unpruned", ["--method", "none"]), ("fastv-25%", ["--method", "fastv", "--keep-ratio", "0.25"])):
        results[label] = _generate(jax_dir, image, prompt, ["--max-new-tokens", str(max_new_tokens), "--runs", "5", *extra])
    base, pruned = results["unpruned"], results["fastv-25%"]
    print()
    print("NOTE: RANDOM weights — the text is meaningless by design; this demo shows the pipeline and the speed.")
    for label, r in results.items():
        t = r["timings"]
        print(f"[{label:9s}] visual tokens kept {len(r['kept_visual_indices'])}/{r['num_visual_tokens']} | "
              f"prefill {t['prefill_s'] * 1e3:7.1f} ms | decode {t['tokens_per_s']:7.1f} tokens/s")
        print(f"            text: {r['text']!r}  (ids {r['output_ids'][:8]}…)")
    speedup = base["timings"]["prefill_s"] / pruned["timings"]["prefill_s"]
    print(f"FastV keep 25% prefill speed-up: {speedup:.2f}x  (prompt {len(base['prompt_ids'])} tokens, "
          f"{base['num_visual_tokens']} of them visual)")


def demo_llada_v(out: str, image: str, prompt: str, gen_length: int, steps: int) -> None:
    """Part B: LLaDA-V, unpruned vs RedVTP keep 50% (throughput gain, latency reduction)."""
    from vtp_jax.testbed.hf_llada_v import build_tiny_llada_v

    hf_dir, jax_dir = os.path.join(out, "hf_llada_v_random"), os.path.join(out, "llada_v_jax")
    print("== B1. building a small LLaDA-V-architecture checkpoint with RANDOM weights (LLaDA-V format) ==")
    build_tiny_llada_v(hf_dir, **LLADA_V_SIZES)  # marks config.json "vtp_random_weights": vtp-generate says so
    print("== B2. converting with vtp-convert ==")
    print(_run([_bin("vtp-convert"), hf_dir, jax_dir, "--no-progress"]).strip() or f"converted → {jax_dir}")

    print("== B3. LLaDA-V: masked-diffusion generation on the same photograph ==")
    common = ["--gen-length", str(gen_length), "--steps", str(steps), "--runs", "5"]
    results = {}
    for label, extra in (("unpruned", ["--method", "none"]), ("redvtp-50%", ["--method", "redvtp", "--keep-ratio", "0.5"])):
        results[label] = _generate(jax_dir, image, prompt, [*common, *extra])
    base, pruned = results["unpruned"], results["redvtp-50%"]
    print()
    print("NOTE: RANDOM weights — the text is meaningless by design; this demo shows the pipeline and the speed.")
    for label, r in results.items():
        t = r["timings"]
        print(f"[{label:10s}] visual tokens kept {len(r['kept_visual_indices'])}/{r['num_visual_tokens']} | "
              f"encode {t['prefill_s'] * 1e3:6.1f} ms | denoise {t['decode_s'] * 1e3:7.1f} ms | "
              f"latency {t['latency_s'] * 1e3:7.1f} ms | {gen_length / t['latency_s']:6.1f} tokens/s")
        print(f"             text: {r['text']!r}  (ids {r['output_ids'][:8]}…)")
    lat_b, lat_p = base["timings"]["latency_s"], pruned["timings"]["latency_s"]
    gain = lat_b / lat_p - 1.0  # same gen_length: throughput ratio = latency ratio
    print(f"RedVTP keep 50%: kept {len(pruned['kept_visual_indices'])}/{pruned['num_visual_tokens']} visual tokens | "
          f"token throughput {gain * 100:+.0f}% | latency −{(1 - lat_p / lat_b) * 100:.0f}%  "
          f"(prompt {len(base['prompt_ids'])} tokens, {base['num_visual_tokens']} of them visual; "
          f"{gen_length} tokens, {steps} denoising steps; throughput = generated tokens / latency)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vtp-demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo_out", help="working directory (recreated)")
    p.add_argument("--prompt", default="What animal is in this picture?")
    p.add_argument("--max-new-tokens", type=int, default=24, help="LLaVA part")
    p.add_argument("--gen-length", type=int, default=32, help="LLaDA-V part")
    p.add_argument("--steps", type=int, default=16, help="LLaDA-V part")
    p.add_argument("--only", choices=["llava", "llada_v"], default=None, help="run one part only")
    args = p.parse_args(argv)

    from PIL import Image
    from skimage import data

    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out)
    image = os.path.join(args.out, "chelsea.png")
    Image.fromarray(data.chelsea()).save(image)

    if args.only in (None, "llava"):
        demo_llava(args.out, image, args.prompt, args.max_new_tokens)
    if args.only in (None, "llada_v"):
        if args.only is None:
            print()
        demo_llada_v(args.out, image, args.prompt, args.gen_length, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
