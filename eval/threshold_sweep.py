"""Accuracy against throughput over Fast-dLLM's parallel-decoding threshold on a masked-diffusion checkpoint, with
and without RedVTP: one ``vtp-eval`` run per threshold (each also times the unpruned model, its baseline row),
collected into ``threshold_sweep.json`` and drawn as ``accuracy_vs_throughput.png``.

    python -m eval.threshold_sweep --model CONVERTED --out docs/results/llada_v_threshold \
        [--thresholds 0.5,0.6,0.7,0.8,0.9,1.0] [--cache dual] [--method redvtp] [vtp-eval flags …]

Flags after the known ones go to ``vtp-eval`` unchanged (``--task``, ``--limit``, ``--gen-length`` …). Each point is
(tokens/s, accuracy) of one run; "LLaDA schedule" is the run without ``--threshold``. Throughput is what
``vtp-eval`` reports (generated tokens per second of the batched loop, compilation excluded): on a small testbed it
says how the number of denoising steps changes, not what a full-size model gains. Exit 2 for bad flags.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile


def parse_thresholds(text: str) -> list[float]:
    """``"0.5,0.9"`` → [0.5, 0.9]; each in (0, 1]. Raises argparse.ArgumentTypeError."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--thresholds: numbers in (0, 1] separated by commas, got {text!r}")
    if not values or any(not 0.0 < v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"--thresholds: numbers in (0, 1] separated by commas, got {text!r}")
    return values


def run_point(model: str, threshold: float | None, cache: str, method: str, extra: list[str]) -> dict:
    """One ``vtp-eval`` run → {"threshold", "rows": [{method, accuracy, tokens_per_s, …}]}. Raises RuntimeError
    with vtp-eval's message when it fails."""
    with tempfile.TemporaryDirectory(prefix="vtp-threshold-") as tmp:
        path = os.path.join(tmp, "out.json")
        cmd = [sys.executable, "-m", "eval.evaluate", "--model", model, "--method", method, "--cache", cache,
               "--json", path, "--no-progress", *extra]
        if threshold is not None:
            cmd += ["--threshold", str(threshold)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"vtp-eval failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
    keys = ("method", "keep_ratio", "accuracy", "tokens_per_s", "latency_s", "n")
    return {"threshold": threshold, "settings": result["settings"],
            "rows": [{k: row.get(k) for k in keys} for row in result["rows"]]}


def plot(points: list[dict], path: str, title: str) -> None:
    """Accuracy (y) against tokens/s (x), one line per method, each point labelled with its threshold."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    methods = sorted({r["method"] for p in points for r in p["rows"]}, key=lambda m: m != "none")
    for m in methods:
        xs, ys, labels = [], [], []
        for p in points:
            row = next((r for r in p["rows"] if r["method"] == m), None)
            if row is not None:
                xs.append(row["tokens_per_s"])
                ys.append(100 * row["accuracy"])
                labels.append("LLaDA" if p["threshold"] is None else f"τ={p['threshold']:g}")
        ax.plot(xs, ys, marker="o", label="unpruned" if m == "none" else m)
        for x, y, t in zip(xs, ys, labels):
            ax.annotate(t, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("throughput (generated tokens/s)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.threshold_sweep", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="converted masked-diffusion checkpoint (vtp-convert)")
    p.add_argument("--out", required=True, help="folder for threshold_sweep.json and accuracy_vs_throughput.png")
    p.add_argument("--thresholds", type=parse_thresholds, default=parse_thresholds("0.5,0.6,0.7,0.8,0.9,1.0"))
    from vtp_jax.generation.diffusion import CACHE_MODES

    p.add_argument("--cache", choices=CACHE_MODES, default="dual")
    p.add_argument("--method", default="redvtp", help="the pruned row of every run (vtp-eval --method)")
    args, extra = p.parse_known_args(argv)
    os.makedirs(args.out, exist_ok=True)
    points = []
    for t in [None, *args.thresholds]:
        try:
            points.append(run_point(args.model, t, args.cache, args.method, extra))
        except RuntimeError as e:
            print(f"threshold_sweep: error: {e}", file=sys.stderr)
            return 2
        row = {r["method"]: r for r in points[-1]["rows"]}
        print(f"threshold {t}: " + ", ".join(f"{m} {100 * r['accuracy']:.1f}% {r['tokens_per_s']:.0f} tok/s"
                                             for m, r in row.items()), flush=True)
    report = {"model": args.model, "cache": args.cache, "method": args.method, "vtp_eval_flags": extra,
              "points": points}
    with open(os.path.join(args.out, "threshold_sweep.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    plot(points, os.path.join(args.out, "accuracy_vs_throughput.png"),
         f"{os.path.basename(os.path.normpath(args.model))}: --cache {args.cache}, parallel decoding threshold τ")
    print(f"wrote {args.out}/threshold_sweep.json and accuracy_vs_throughput.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
