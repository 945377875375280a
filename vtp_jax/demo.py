"""``make demo``: the main job end to end on a real photograph.

1. Builds a small LLaVA-1.5-architecture checkpoint with RANDOM weights in real Hugging Face format
   (config via transformers, tokenizer trained with ``tokenizers``, CLIP image-processor config, chat template).
2. Converts it with ``vtp-convert`` (the real CLI).
3. Runs ``vtp-generate`` on a real photograph shipped by scikit-image (``skimage.data.chelsea``, a cat), unpruned
   and with FastV keeping 25% of the visual tokens, and prints both outputs, the kept count and the prefill speed-up.

The weights are random: the generated text is meaningless by design; the point is the pipeline and the speed.
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vtp-demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo_out", help="working directory (recreated)")
    p.add_argument("--prompt", default="What animal is in this picture?")
    p.add_argument("--max-new-tokens", type=int, default=24)
    args = p.parse_args(argv)

    from PIL import Image
    from skimage import data

    from vtp_jax.testbed.hf_llava import build_tiny_llava

    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out)
    hf_dir, jax_dir = os.path.join(args.out, "hf_llava_random"), os.path.join(args.out, "llava_jax")
    image = os.path.join(args.out, "chelsea.png")
    Image.fromarray(data.chelsea()).save(image)

    print("== 1. building a small LLaVA-architecture checkpoint with RANDOM weights (HF format) ==")
    build_tiny_llava(
        hf_dir, image_size=224, patch_size=14, vision_hidden=256, vision_layers=4, vision_heads=4, vision_mlp=1024,
        text_hidden=512, text_layers=8, text_heads=8, text_kv_heads=8, text_mlp=1376, vocab_size=512,
    )
    print("== 2. converting with vtp-convert ==")
    print(_run([_bin("vtp-convert"), hf_dir, jax_dir]).strip())

    print("== 3. generating on a real photograph (skimage.data.chelsea) ==")
    results = {}
    for label, extra in (("unpruned", ["--method", "none"]), ("fastv-25%", ["--method", "fastv", "--keep-ratio", "0.25"])):
        out = _run([
            _bin("vtp-generate"), "--model", jax_dir, "--image", image, "--prompt", args.prompt,
            "--max-new-tokens", str(args.max_new_tokens), "--json", "--runs", "5", *extra,
        ])
        results[label] = json.loads(out)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
