"""``python -m eval.cpu_matmul_probe``: how XLA's CPU backend runs bf16 weight matrices, option by option.

The measurement behind :mod:`vtp_jax.modeling.layers` (docs/bf16_cpu.md): a stack of ``--layers`` SwiGLU MLPs of
LLaVA-1.5-7B's width (4096 → 11008 → 4096; 271 MB of bf16 weights per layer) applied to ``--tokens`` rows (1 = a
decode step's matrix–vector products, 128+ = prefill), compiled under each option; for each it prints the compiled
temp memory (``memory_analysis().temp_size_in_bytes``), the best-of-``--runs`` wall time, the weight bytes read per
second and the FLOP rate. Options:

* ``f32`` — float32 weights (2× the bytes; the reference rate of XLA's float32 dot);
* ``bf16`` — plain bf16 ``x @ W`` with the default (concurrency-optimised) scheduler;
* ``bf16+memsched`` — the same with ``xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED``;
* ``bf16+blocked`` — :func:`vtp_jax.modeling.layers.weight_dot_general` (kernel converted in cache-sized blocks of the
  contraction axis, partial products summed in float32) with the memory-optimised scheduler: what the models use;
* ``bf16+onednn`` — plain bf16 with XLA's oneDNN dot fusion (``xla_cpu_use_onednn``, ``LIBRARY_FUSION_TYPE_DOT``).

Also prints the host's memory read bandwidth (numpy sum over a 1 GB float32 array, one thread, best of 3) in GB/s.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

MEMSCHED = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
OPTIONS = {
    "f32": ("float32", False, {}),
    "bf16": ("bfloat16", False, {}),
    "bf16+memsched": ("bfloat16", False, MEMSCHED),
    "bf16+blocked": ("bfloat16", True, MEMSCHED),
    "bf16+onednn": ("bfloat16", False, {**MEMSCHED, "xla_cpu_use_onednn": True,
                                        "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}),
}


def read_bandwidth(nbytes: int = 2**30, runs: int = 3) -> float:
    """Host memory read bandwidth, bytes/s: best of ``runs`` numpy sums over a float32 array of ``nbytes``."""
    a = np.ones(nbytes // 4, np.float32)
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t)
    return nbytes / best


def probe(option: str, *, tokens: int, layers: int, runs: int, d: int = 4096, f: int = 11008) -> dict:
    """Compiles and times the MLP stack under ``option``; returns {"temp_bytes", "weight_bytes", "seconds",
    "weight_bytes_per_s", "flops_per_s"}."""
    import jax
    import jax.numpy as jnp

    from vtp_jax.modeling.layers import weight_dot_general

    dtype, blocked, opts = OPTIONS[option]
    key = jax.random.PRNGKey(0)
    ws = [tuple(jax.random.normal(key, s, dtype) for s in ((d, f), (d, f), (f, d))) for _ in range(layers)]
    x = jnp.ones((tokens, d), dtype)
    dims = (((1,), (0,)), ((), ()))

    def mm(a, w):
        return weight_dot_general(a, w, dims) if blocked else a @ w

    def stack(x, ws):
        for g, u, dn in ws:
            x = x + mm(jax.nn.silu(mm(x, g)) * mm(x, u), dn)
        return x

    compiled = jax.jit(stack, compiler_options=opts or None).lower(x, ws).compile()
    compiled(x, ws).block_until_ready()
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        compiled(x, ws).block_until_ready()
        best = min(best, time.perf_counter() - t)
    wbytes = sum(w.nbytes for t in ws for w in t)
    params = wbytes // np.dtype(dtype).itemsize
    return {"temp_bytes": compiled.memory_analysis().temp_size_in_bytes, "weight_bytes": wbytes, "seconds": best,
            "weight_bytes_per_s": wbytes / best, "flops_per_s": 2 * tokens * params / best}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.cpu_matmul_probe", description=__doc__.split("\n")[0])
    p.add_argument("--tokens", default="1,128", help="rows per product, comma-separated (1 = decode)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--options", default=",".join(OPTIONS))
    args = p.parse_args(argv)
    options = [o.strip() for o in args.options.split(",")]
    bad = [o for o in options if o not in OPTIONS]
    if bad or args.layers < 1 or args.runs < 1:
        p.error(f"unknown option(s) {bad} (choose from {', '.join(OPTIONS)}); --layers, --runs ≥ 1")
    print(f"host read bandwidth (numpy, 1 thread): {read_bandwidth() / 1e9:.1f} GB/s")
    print("| option | tokens | temp GB | weights GB | ms | weight GB/s | GFLOP/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for tokens in (int(t) for t in args.tokens.split(",")):
        for option in options:
            r = probe(option, tokens=tokens, layers=args.layers, runs=args.runs)
            print(f"| {option} | {tokens} | {r['temp_bytes'] / 1e9:.2f} | {r['weight_bytes'] / 1e9:.2f} | "
                  f"{1e3 * r['seconds']:.1f} | {r['weight_bytes_per_s'] / 1e9:.2f} | {r['flops_per_s'] / 1e9:.1f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
