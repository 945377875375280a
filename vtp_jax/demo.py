"""``make demo``: the main job end to end: a TRAINED testbed first, then the speed parts on a real photograph.

Part 0 — the trained testbeds (TRAINED weights; printed first; a testbed whose checkpoint is missing is skipped with
a message):
0. Converts the shipped checkpoint ``testbed_models/llava_shapes`` (HF format, a tiny LLaVA trained by
   ``vtp-train-testbed`` on the synthetic shapes VQA task of :mod:`vtp_jax.testbed.shapes`; its ``config.json``
   ``vtp_testbed`` record holds the measured test accuracy, printed here) with ``vtp-convert``. Renders two test-split
   images at the model's input size to PNG and asks each three of its questions (colour, count, location): the
   expected answer, the answer unpruned, with ToDRE keeping 10% and with FastV keeping 25% of the visual tokens, and
   the kept counts. The 18 answers run in one process through the same loader, processor, method builder and
   generator as ``vtp-generate`` (one batch and one compilation per method; separate ``vtp-generate`` calls would
   spend ~10 s each on start-up and compilation). Then one real ``vtp-generate`` call asks a question about the
   photograph — out of distribution: the testbed has only ever seen synthetic shapes.
0b. The same for the shipped diffusion testbed ``testbed_models/llada_v_shapes`` (a tiny LLaDA-V, masked-diffusion
   decoding with its recorded gen_length / block length / denoising steps): unpruned, RedVTP keeping 25% and
   DivPrune keeping 10% of the visual tokens.

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

Parts A and B use random weights: their generated text is meaningless by design; the point is the pipeline and the
speed. Timings are medians of several runs after a warm-up (compilation excluded), on whatever CPU runs the demo.
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


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTBED = os.path.join(ROOT, "testbed_models", "llava_shapes")
LLADA_TESTBED = os.path.join(ROOT, "testbed_models", "llada_v_shapes")
# Part 0: fixed test-split examples (seed 0) and the question kinds asked of each (in this order).
TESTBED_EXAMPLES = (0, 1)
TESTBED_KINDS = ("colour", "count", "location")
# per family: (label, --method, --keep-ratio)
TESTBED_METHODS = {
    "llava": (("unpruned", "none", None), ("todre-10%", "todre", 0.1), ("fastv-25%", "fastv", 0.25)),
    "llada_v": (("unpruned", "none", None), ("redvtp-25%", "redvtp", 0.25), ("divprune-10%", "divprune", 0.1)),
}
ARCHITECTURE = {"llava": "a tiny LLaVA (autoregressive)", "llada_v": "a tiny LLaDA-V (masked diffusion)"}


def demo_testbed(out: str, image: str, prompt: str, testbed: str = TESTBED, part: str = "0") -> None:
    """Part 0 / 0b: a TRAINED tiny testbed (either family, read from its config) answers shapes questions,
    unpruned and with two pruning methods (:data:`TESTBED_METHODS`), then one question about the photograph."""
    import time

    if not os.path.isfile(os.path.join(testbed, "config.json")):
        print(f"== {part}. a trained testbed: SKIPPED ==")
        print(f"no trained testbed checkpoint at {testbed} (expected an HF-format testbed written by "
              f"vtp-train-testbed); skipping part {part}.")
        return

    import numpy as np

    from vtp_jax import checkpoint, families
    from vtp_jax.processing import load_processor
    from vtp_jax.runtime import build_methods
    from vtp_jax.testbed import shapes
    from vtp_jax.training import testbed as train

    t_start = time.perf_counter()
    record = train.read_record(testbed)
    family = record.get("family", "llava")
    jax_dir = os.path.join(out, os.path.basename(os.path.normpath(testbed)) + "_jax")
    print(f"== {part}. a trained testbed: {ARCHITECTURE.get(family, family)} with TRAINED weights (not random) ==")
    print(f"checkpoint: {testbed}")
    print("These weights were TRAINED (vtp-train-testbed) on a synthetic visual question answering task: coloured "
          "circles, squares and triangles on a 3x3 grid over a busy background (vtp_jax.testbed.shapes). "
          "Parts A and B below use RANDOM weights.")
    test = record.get("test") or {}
    if "accuracy" in test:
        kinds = ", ".join(f"{k} {v:.0%}" for k, v in (test.get("per_kind") or {}).items())
        print(f"recorded test accuracy (exact match, {test.get('n', '?')} held-out test examples): "
              f"{test['accuracy']:.1%}" + (f"  [{kinds}]" if kinds else ""))
    else:
        print("recorded test accuracy: not in the checkpoint's vtp_testbed record")

    print(f"== {part}.1 converting with vtp-convert ==")
    print(_run([_bin("vtp-convert"), testbed, jax_dir, "--no-progress"]).strip() or f"converted → {jax_dir}")

    model, cfg, _ = checkpoint.load(jax_dir)
    processor = load_processor(jax_dir, cfg)
    size = train.shapes_image_size(cfg)
    settings = {**train.GENERATION[cfg.family], **(record.get("generation") or {})}
    sampler_flags = families.get(cfg.family).sampler_defaults  # the generator kind's flags (vtp-generate's)
    gen_flags = [x for k in ("max_new_tokens", "gen_length", "block_length", "steps")
                 if k in sampler_flags and k in settings for x in ("--" + k.replace("_", "-"), str(settings[k]))]
    methods = TESTBED_METHODS[cfg.family]

    print(f"== {part}.2 questions about two test-split images ({size}x{size} px) ==")
    rows = []  # (png, example index, QA)
    for i in TESTBED_EXAMPLES:
        ex = shapes.make_example("test", i, 0, size=size)
        png = os.path.join(out, f"shapes_test_{i}_{size}px.png")
        ex.image.save(png)
        qas = {qa.kind: qa for qa in shapes.make_questions(ex.scene, np.random.default_rng(i))}
        picked = [qas[k] for k in TESTBED_KINDS if k in qas]
        picked += [qa for k, qa in qas.items() if k not in TESTBED_KINDS][: 3 - len(picked)]
        objects = ", ".join(f"{o.colour} {o.shape} {shapes.place_name(o.cell)}" for o in ex.scene.objects)
        print(f"image {png}: test example {i} — {objects}")
        rows += [(png, i, qa) for qa in picked]
    print("(each answer is what `vtp-generate --model " + jax_dir + " --image PNG --prompt QUESTION --method M "
          f"[--keep-ratio R] {' '.join(gen_flags)}` prints; here the {len(rows)} questions run as one batch per "
          "method in this process, so the model is loaded and compiled once per method)")

    from PIL import Image

    images = [Image.open(png).convert("RGB") for png, _, _ in rows]
    batch = processor(images, [qa.question for _, _, qa in rows])
    n_v = int(batch.num_visual_tokens)  # LLaVA: fixed by the config; LLaDA-V: by the anyres layout of the image
    answers, kept = {}, {}
    for label, name, ratio in methods:
        method = build_methods(name, cfg.family, n_v, cfg.text.num_hidden_layers, keep_ratio=ratio)
        texts, res = train.generate_answers(train.testbed_generator(model, processor, settings, method), processor,
                                            batch, settings)
        answers[label] = [t.strip() for t in texts]
        kept[label] = sorted({int(np.asarray(res.kept[b]).shape[0]) for b in range(len(rows))})

    print()
    labels = [label for label, _, _ in methods]
    print(f"{'image':>5s}  {'question':46s} {'expected':9s} " + " ".join(f"{lb:12s}" for lb in labels))
    for r, (_, i, qa) in enumerate(rows):
        cells = []
        for lb in labels:
            a = answers[lb][r]
            mark = "✓" if train.normalise(a) == train.normalise(qa.answer) else "✗"
            cells.append(f"{(a or '∅') + ' ' + mark:12s}")
        print(f"{i:>5d}  {qa.question:46s} {qa.answer:9s} " + " ".join(cells))
    right = [sum(train.normalise(a) == train.normalise(qa.answer) for a, (_, _, qa) in zip(answers[lb], rows))
             for lb in labels]
    print(f"{'':5s}  {'correct':46s} {'':9s} " + " ".join(f"{f'{c}/{len(rows)}':12s}" for c in right))
    print("visual tokens kept: " + " | ".join(
        f"{lb} {'/'.join(map(str, kept[lb]))}/{n_v}" for lb in labels))

    print(f"== {part}.3 the same trained testbed on the photograph (out of distribution) ==")
    r = _generate(jax_dir, image, prompt, ["--method", "none", *gen_flags, "--warmup", "0"])
    print(f"question: {prompt!r} → answer: {r['text'].strip()!r}  "
          f"(kept {len(r['kept_visual_indices'])}/{r['num_visual_tokens']} visual tokens)")
    print("NOTE: the testbed has only ever seen synthetic shapes and answers with the shapes task's words (a colour, "
          "a shape, a count, yes/no): on a photograph its answer is out of distribution and says nothing about the "
          "photo.")
    print(f"part {part} wall time: {time.perf_counter() - t_start:.1f} s")


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


DEMO_MARKER = ".vtp-demo"  # written into --out, so that a later run knows the folder is the demo's to recreate


def prepare_out(out: str) -> None:
    """Recreates the demo's working folder ``out`` — but only a folder the demo owns: one that does not exist, is
    empty, holds the :data:`DEMO_MARKER` file, or (written by an earlier demo) holds ``chelsea.png``. Any other
    folder, or a file, is left untouched. Raises SystemExit (exit 2, ``vtp-demo: error: …``) for those."""
    if os.path.lexists(out):
        if not os.path.isdir(out) or os.path.islink(out):
            _usage_error(f"--out {out} exists and is not a folder; choose another --out")
        entries = os.listdir(out)
        if entries and not ({DEMO_MARKER, "chelsea.png"} & set(entries)):
            _usage_error(f"--out {out} is a folder the demo did not make ({len(entries)} entries); it would be "
                         "deleted and recreated, so choose an empty or new --out")
        shutil.rmtree(out)
    os.makedirs(out)
    with open(os.path.join(out, DEMO_MARKER), "w", encoding="utf-8") as fh:
        fh.write("vtp-demo working folder: recreated by every run\n")


def _usage_error(message: str):
    print(f"vtp-demo: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    """``vtp-demo`` / ``make demo``: runs the parts above. Returns 0; argparse usage errors and an ``--out`` the
    demo does not own exit 2 with a message."""
    from vtp_jax import argtypes

    p = argparse.ArgumentParser(prog="vtp-demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo_out",
                   help="working directory (recreated; must be new, empty, or one an earlier demo made)")
    p.add_argument("--prompt", default="What animal is in this picture?")
    p.add_argument("--max-new-tokens", type=argtypes.POSITIVE, default=24, help="LLaVA part (≥ 1)")
    p.add_argument("--gen-length", type=argtypes.POSITIVE, default=32, help="LLaDA-V part (≥ 1)")
    p.add_argument("--steps", type=argtypes.POSITIVE, default=16, help="LLaDA-V part (≥ 1)")
    p.add_argument("--only", choices=["testbed", "llada_testbed", "llava", "llada_v"], default=None,
                   help="run one part only")
    p.add_argument("--testbed", default=TESTBED, help="part 0: the trained HF-format LLaVA testbed checkpoint")
    p.add_argument("--llada-testbed", default=LLADA_TESTBED,
                   help="part 0b: the trained HF-format LLaDA-V testbed checkpoint")
    args = p.parse_args(argv)

    from PIL import Image
    from skimage import data

    prepare_out(args.out)
    image = os.path.join(args.out, "chelsea.png")
    Image.fromarray(data.chelsea()).save(image)

    if args.only in (None, "testbed"):
        demo_testbed(args.out, image, args.prompt, args.testbed, part="0")
    if args.only in (None, "llada_testbed"):
        if args.only is None:
            print()
        demo_testbed(args.out, image, args.prompt, args.llada_testbed, part="0b")
    if args.only in (None, "llava"):
        if args.only is None:
            print()
        demo_llava(args.out, image, args.prompt, args.max_new_tokens)
    if args.only in (None, "llada_v"):
        if args.only is None:
            print()
        demo_llada_v(args.out, image, args.prompt, args.gen_length, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
