"""``vtp-bench``: speed of LLaVA and LLaDA-V generation, every pruning method at keep 50/25/10 % — PyTorch vs vtp_jax.

**The weights are RANDOM.** Each section writes a random-weight checkpoint on disk, converts it with
:func:`convert.convert` and loads it with :func:`vtp_jax.checkpoint.load`. It measures speed only; the generated text
is meaningless. ``--family llava|llada_v|all`` (default all) picks the sections; ``--json`` holds one object per
section under ``"llava"`` / ``"llada_v"``. ``--preset micro|tiny|small`` sizes both sections.

Which variants (flags; bad values exit 2 with ``vtp-bench: error: ...`` before anything runs):

* ``--methods M1,M2,...`` — LLaVA pruning methods (default: every method registered for LLaVA's stages in
  ``Family.stages`` (:mod:`vtp_jax.families`) except ``dyrate``, which needs a trained rate predictor: ``fastv, todre,
  divprune, random, todre-relevance``; ``""`` = only the unpruned baselines).
* ``--llada-methods M1,M2,...`` — LLaDA-V pruning methods of the 32/16 setting (default every registered one:
  ``redvtp, llada-fastv, todre, divprune, random``).
* ``--keeps P1,P2,...`` — percentages of the N_v visual tokens kept (default ``50,25,10``), for both families.

Each method that takes a keep count becomes one jax variant per keep, ``jax <method>-<keep %>`` (e.g.
``jax todre-10``), built by :func:`vtp_jax.runtime.build_method` exactly as ``vtp-generate --method M --keep-ratio
P/100`` builds it: keep = ``max(1, round(N_v · P/100))`` for LLaVA, ``max(1, int(N_v · P/100))`` for LLaDA-V;
method defaults otherwise (FastV layer K = ``--fastv-layer``; ToDRE's pivot automatic: the class-token attention on
CLIP, the norm pivot on SigLIP; ``random`` seed 0 as vtp-generate's default ``--seed``). A method without a keep count
(``todre-relevance``, ToDRE stage 2: τ = 0.10 at layer ℓ = ⌊7L/8⌋) is one variant, ``jax todre-relevance``; whether
it fired — dropped every visual token from layer ℓ on — is data dependent (on random weights it may or may not) and
is reported per run from ``GenerationOutput.stage2_dropped`` with its two ratios α_t→v, α_v→t.

LLaVA section
=============

A random-weight LLaVA-1.5 checkpoint in Hugging Face format (:func:`vtp_jax.testbed.hf_llava.write_random_llava`).
Everything happens in one process and one run:

1. Build the checkpoint (preset ``tiny`` by default: CLIP 4 layers × 256 hidden at 224 px / patch 14 → 256 visual
   tokens; Llama 8 layers × 512 hidden, 8 heads, MLP 1376, vocab 512) in a temporary directory.
2. A fixed prompt, built from ids directly (no tokenizer): ``bos`` + 5 text ids + N_v image tokens + 8 text ids,
   repeated over the batch; pixel values are random float32 [B, 3, H, W]; attention mask all ones (no padding).
3. For each variant — ``torch`` (transformers ``LlavaForConditionalGeneration``, fp32, eval mode, default
   ``torch.get_num_threads()`` unless ``--torch-threads``), ``jax none``, then ``--methods`` × ``--keeps`` (default
   ``jax fastv-50``, ``-25``, ``-10`` (FastV at decoder layer K = 2), ``jax todre-50`` … ``jax random-10``,
   ``jax todre-relevance``: 14 jax variants) — ``--warmup`` untimed runs, then
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
* LLM prefill (:func:`method_prefill_flops`): ``B · (Σ_layers layer(T_l) + 2·D·V)``, ``2·D·V`` the LM head on the
  last position only, with T_l per method:

  - none / torch: T_l = T in every layer;
  - FastV: T for the layers before K, ``T − N_v + keep`` from layer K on; its probe (one attention row at layer
    K − 1) and top-k are O(T·D) and ignored;
  - pre-LLM methods (``todre``, ``divprune``, ``random``): ``T − N_v + keep`` in every layer (the selection —
    ToDRE's pivot from attention the tower computes anyway, the greedy max-sum / max-min diversification
    O(keep·N_v·D), random's permutation — is ignored);
  - ``todre-relevance``: T for layers < ℓ; from layer ℓ on ``T − N_v`` if it fired for every row, else T (a batch
    where some rows did not fire runs at full length); plus its probe at layer ℓ, the q / k projections of layer ℓ's
    input and the T×T scores of every prompt row, ``B · (2·T·D·(H + KV)·d_h + 2·T²·H·d_h)`` — so when it does not
    fire its FLOP ratio is below 1.
* Vision + projector (the same for every variant):
  ``B · (2·N_p·C·p²·D_v + Σ_run-layers [2·S·(4·D_v² + 2·D_v·F_v) + 4·S²·D_v] + 2·N_v·(D_v·n_f·D + D·D))``
  with N_p patches, S = N_p (+1 class token) positions, n_f concatenated feature layers, and only the
  layers up to the selected feature layer counted (vtp_jax runs just those; transformers' CLIP runs them all, so
  torch does one extra vision layer for the default ``vision_feature_layer = −2``).

The table (one per family) lists every variant: method, keep %, visual tokens kept (FastV: from layer K on;
todre-relevance: in layers ≥ ℓ), LLM tokens after pruning, prefill ms (median, best), decode tokens/s (median,
best), prefill speed-up over jax none, decode × torch, LLM prefill GFLOP and the FLOP ratio jax none / variant,
compile s, and for todre-relevance whether it fired. JSON ``rows`` are keyed by variant name (``"torch"``,
``"jax none"``, ``"jax fastv-50"``, …) and add ``method``, ``stage``, ``keep_percent`` and ``stage2`` (todre-relevance:
``fired``, ``fired_runs``, ``layer``, ``tau``, ``alpha_t2v``, ``alpha_v2t``; else null).

Targets (reported PASS / MISS, or SKIPPED when the variant is not selected): decode tokens/s jax none / torch ≥ 3×;
prefill speed-up of FastV keep 25 % (``jax fastv-25``) over jax none ≥ 1.5×.

LLaDA-V section
===============

A config where visual tokens dominate the sequence (preset ``tiny``: SigLIP-style tower 4 layers × 192 on 96 px tiles,
patch 8 → 144 features per tile; a 300 × 451 image → anyres 2×2 grid + base tile, unpadded, with newlines → 544
visual tokens; LLaDA decoder 6 layers × 320 hidden, 5 heads, MLP 864, vocab 512). Prompt ``bos`` + 5 text ids +
N_v image placeholders + 8 text ids (558 tokens), batch 1, random pixel values [1, 5, 3, 96, 96].

1. The PyTorch reference :class:`vtp_jax.testbed.torch_llada_v.Reference` (transformers SigLIP + LLaVA-OneVision
   packing + a bidirectional ``LlamaModel``; ``--torch-attn``, default sdpa) is built with random weights (torch
   seed 0) and its tensors are written as a LLaDA-V checkpoint (LLaDA-V names, config, tokenizer, image processor;
   :func:`~vtp_jax.testbed.torch_llada_v.write_reference_checkpoint`), converted and loaded: both sides run the SAME
   weights. (With ``--no-torch``, random numpy weights from :mod:`vtp_jax.testbed.hf_llada_v`.)
2. RedVTP's evaluation settings, gen_length / steps = 32 / 16 (block 32) and 2 / 2 (block 2); greedy,
   low-confidence remasking; LLaDA-V's suppressed ids (EOS, BOS, header ids) on both sides.
3. Variants per setting: ``torch`` (LLaDA's ``generate`` loop, :func:`vtp_jax.testbed.torch_llada_v.generate`: the
   whole sequence recomputed at every step, logits of every position), ``jax none`` (``DiffusionGenerator``), then
   at 32/16 ``--llada-methods`` × ``--keeps`` (default ``jax redvtp-50`` … ``jax random-10``: 15 variants) and at 2/2
   only ``jax redvtp-50`` / ``jax redvtp-25`` (:data:`SHORT_SETTING_VARIANTS`, to bound the run time). RedVTP and
   LLaDA-FastV (stage ``during_generation``) score the visual tokens at the first step and run every later step on
   the compacted sequence; ToDRE stage 1, DivPrune and random (``pre_llm``) prune before the first step. Keep
   ``max(1, int(N_v · r))``. Warm-up as above (jax compiles there; ``compile s`` is the first call's wall time), then
   interleaved timed runs (every variant of both settings, round robin), medians. One table lists every variant of
   both settings (setting, variant, method, keep %, kept, sequence length, latency ms (median, best), tokens/s, gain,
   ×torch, GFLOP, FLOP ratio, encode ms, time split, compile s).

Measurements: **latency ms** — wall time of one whole generation: vision + projector + packing once, then every
denoising step (jax: ``DiffusionOutput.latency_s`` = encode + denoise, each ended by a device sync; torch: the
``generate`` call). **tokens/s** = gen_length / latency (batch 1; every position is decoded whatever the answer's
length). **gain** = tokens/s over jax none − 1 (+x %). **×torch** = tokens/s over torch's. Greedy tokens of torch and
jax none are compared position by position (sanity check that both compute the same model). A time split of the jax
variants (encode / first step / the other steps, each synchronised; :data:`BREAKDOWN_RUNS` extra runs interleaved
with the first timed rounds, so inside the same load window; medians) shows where the time goes.

Analytic FLOPs of one generation (:func:`diffusion_flops`): vision (patch embedding + the stored SigLIP layers,
``2·S·(4·D_v² + 2·D_v·F_v) + 4·S²·D_v`` per layer and tile, S = p² positions, no class token) + projector
(``2·S·(D_v·D + D·D)`` per tile) once; then per step ``L · layer(T) + 2·D·V·R`` with ``layer(T)`` as in the LLaVA
section (dense bidirectional T×T attention), T = prompt + gen_length (RedVTP and LLaDA-FastV: T − N_v + keep after
the first step, their attention probes ignored; pre-LLM methods: T − N_v + keep at every step, the selection
ignored) and R = gen_length logit rows (torch: R = T, and one more SigLIP layer). The FLOP ratio jax none / variant is
the throughput gain that FLOPs alone would give.

Target (PASS / MISS, SKIPPED without ``jax redvtp-50`` at 32/16): token-throughput gain of RedVTP keep 50 % over jax
none at 32 / 16 ≥ +100 % (the RedVTP paper reports up to +186 % on LLaDA-V-8B).

Full-size presets
=================

``--preset llava-1.5-7b`` / ``--preset llada-v-8b`` (``--layers N``: decoder depth 1..32, default 32): the real
models' shapes and configs with RANDOM weights (:mod:`vtp_jax.testbed.full_size`, cached under ``--cache-dir`` /
``$VTP_CACHE`` / ``~/.cache/vtp_jax/presets``), bf16 on both sides. One family per run; vtp-convert, the jax side and
the torch side (transformers ``LlavaForConditionalGeneration`` in bf16 / the PyTorch LLaDA loop on the same bf16
weights) each run in their own subprocess, so each peak RSS is that side's own. It reports conversion time and peak
RSS, load and compile time, prefill ms and decode tokens/s (LLaDA-V: latency and tokens/s at 32/16 and 2/2), jax /
torch ratios, the pruning rows (defaults: FastV / ToDRE / DivPrune for LLaVA, RedVTP / LLaDA-FastV / ToDRE for LLaDA-V,
at ``--keeps``), the measured memory read bandwidth and the weight-read roofline. See :mod:`eval.full_size_bench`.
The width flags (``--text-hidden`` …) shrink a full-size preset for tests only (the report says REDUCED WIDTHS).

Run time
========

Most of the wall time is jax compilation, once per jax variant (its ``compile s``, ~4–10 s each on the project's
2-core CPU); the default run has 14 LLaVA and 16 + 3 LLaDA-V jax variants (before ``--methods`` / ``--llada-methods``
/ ``--keeps`` existed: 3 and 3 + 3). ``vtp-bench --preset micro --runs 2`` took 91 s before and 197 s after (both
with other jobs using the CPUs). The default ``tiny`` preset, ``--runs 5``, is estimated (not measured) at ~6–7 min
on an idle 2-core machine (before: ~2.5–3 min) and about twice that under load; ``--methods``, ``--llada-methods``
and ``--keeps`` trim it (e.g. ``--keeps 25``).
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

from vtp_jax import argtypes

RANDOM_WEIGHTS_NOTE = "RANDOM WEIGHTS: speed only, the generated text is meaningless"
FULL_SIZE_PRESETS = ("llava-1.5-7b", "llada-v-8b")  # = vtp_jax.testbed.full_size.PRESETS (eval/full_size_bench.py)

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
DEFAULT_KEEPS = "50,25,10"  # --keeps: percent of the visual tokens kept (each method with a keep count, both families)
# Registered methods not benchmarked by default (and refused by --methods / --llada-methods), with the reason.
NOT_BENCHED = {"dyrate": "it needs a trained rate predictor (vtp-train-dyrate), which random weights do not have"}
# Order of the variants in the tables (methods registered later and not listed here follow in registry order).
METHOD_ORDER = ("fastv", "redvtp", "llada-fastv", "todre", "divprune", "random", "todre-relevance")
TARGET_DECODE_VS_TORCH = 3.0
TARGET_FASTV25_PREFILL = 1.5
FOREIGN_LOAD_WARN = 0.1  # share of all CPU time used by other processes above which timings are flagged


class BenchError(ValueError):
    """Bad benchmark settings (reported as ``vtp-bench: error: ...``, exit code 2)."""


# ---------------------------------------------------------------------------------------------------------------
# Methods and keeps (--methods, --llada-methods, --keeps)
# ---------------------------------------------------------------------------------------------------------------

_FLAG = {"llava": "--methods", "llada_v": "--llada-methods"}


def family_methods(family: str) -> list[str]:
    """Every registered pruning method that ``family``'s generator runs (``Family.stages``), except
    :data:`NOT_BENCHED`, in :data:`METHOD_ORDER` (the default of ``--methods`` / ``--llada-methods``)."""
    from vtp_jax.pruning import METHODS
    from vtp_jax.runtime import family_stages

    names = [n for n, cls in METHODS.items() if cls.stage in family_stages(family) and n not in NOT_BENCHED]
    rank = {n: i for i, n in enumerate(METHOD_ORDER)}
    return sorted(names, key=lambda n: rank.get(n, len(rank)))  # stable: unlisted ones keep registry order


def takes_keep(name: str) -> bool:
    """Whether the registered method ``name`` takes a keep count (False: ToDRE stage 2, DyRate)."""
    from vtp_jax.pruning import METHODS

    return bool(getattr(METHODS[name], "takes_keep", True))


def parse_methods(spec: str | None, family: str) -> list[str]:
    """``--methods`` / ``--llada-methods``: comma-separated registered names for ``family`` (None = every one,
    :func:`family_methods`; "" = none: only the unpruned baselines). Raises BenchError naming the problem."""
    if spec is None:
        return family_methods(family)
    from vtp_jax.pruning import METHODS
    from vtp_jax.runtime import family_stages

    flag, fitting = _FLAG[family], family_methods(family)
    names = [n.strip() for n in spec.split(",")] if spec.strip() else []
    for n in names:
        if n == "none":
            raise BenchError(f"{flag}: 'none' is not a pruning method (jax none always runs)")
        if n not in METHODS:
            raise BenchError(f"{flag}: unknown pruning method {n!r} (methods for {family}: {', '.join(fitting)})")
        if METHODS[n].stage not in family_stages(family):
            raise BenchError(f"{flag}: pruning method {n!r} (stage {METHODS[n].stage}) does not apply to {family} "
                             f"(methods for {family}: {', '.join(fitting)})")
        if n in NOT_BENCHED:
            raise BenchError(f"{flag}: {n!r} is not benchmarked: {NOT_BENCHED[n]}")
    if len(set(names)) != len(names):
        raise BenchError(f"{flag}: method listed twice in {spec!r}")
    return names


def parse_keeps(spec: str) -> list[float]:
    """``--keeps``: comma-separated percentages in (0, 100] → floats, in the given order. Raises BenchError."""
    out: list[float] = []
    if not spec.strip():
        raise BenchError("--keeps: give at least one percentage (e.g. 50,25,10)")
    for part in spec.split(","):
        try:
            pct = float(part.strip())
        except ValueError:
            raise BenchError(f"--keeps: {part.strip()!r} is not a number (give percentages, e.g. 50,25,10)") from None
        if not 0.0 < pct <= 100.0:  # also rejects nan
            raise BenchError(f"--keeps: every percentage must be in (0, 100], got {part.strip()}")
        out.append(pct)
    if len({keep_label(p) for p in out}) != len(out):
        raise BenchError(f"--keeps: percentage listed twice in {spec!r}")
    return out


def keep_label(pct: float) -> str:
    """50.0 → "50", 12.5 → "12.5" (the suffix of a variant's name)."""
    return f"{pct:g}"


def variant_name(method: str, pct: float | None) -> str:
    """``jax <method>-<keep %>``, or ``jax <method>`` for a method without a keep count."""
    return f"jax {method}" if pct is None else f"jax {method}-{keep_label(pct)}"


def variant_specs(methods: list[str], keeps: list[float]) -> list[tuple[str, str | None, float | None]]:
    """(name, method, keep %) of every jax variant: ``jax none`` first, then each method (in ``methods``' order) at
    every keep (methods that take no keep count: once, keep None)."""
    specs: list[tuple[str, str | None, float | None]] = [("jax none", None, None)]
    for m in methods:
        for pct in (keeps if takes_keep(m) else [None]):
            specs.append((variant_name(m, pct), m, pct))
    return specs


def build_variant_method(name: str | None, family: str, num_visual: int, num_layers: int, pct: float | None,
                         **options: Any):
    """The method object of one variant through :func:`vtp_jax.runtime.build_method`, exactly as ``vtp-generate
    --method NAME --keep-ratio pct/100`` builds it (keep count: LLaVA rounds ``N_v · ratio``, LLaDA-V floors it; at
    least 1); ``options`` that the method's dataclass does not declare are dropped; methods with a ``seed`` get 0
    (vtp-generate's default ``--seed``); ToDRE's pivot stays automatic (class-token attention on CLIP, the norm
    pivot on SigLIP). None for "none". Raises BenchError."""
    import dataclasses

    from vtp_jax.pruning import METHODS
    from vtp_jax.runtime import build_method

    if name is None:
        return None
    fields = {f.name for f in dataclasses.fields(METHODS[name])}
    opts = {k: v for k, v in {"seed": 0, **options}.items() if k in fields}
    try:
        return build_method(name, family, num_visual, num_layers, keep_ratio=None if pct is None else pct / 100.0,
                            **opts)
    except ValueError as e:  # InputError / PruningError
        raise BenchError(f"{variant_name(name, pct)}: {e}") from e


def _selection(args: argparse.Namespace) -> tuple[list[str], list[str], list[float]]:
    """(LLaVA methods, LLaDA-V methods, keep percentages) from the flags; raises BenchError."""
    return (parse_methods(getattr(args, "methods", None), "llava"),
            parse_methods(getattr(args, "llada_methods", None), "llada_v"),
            parse_keeps(DEFAULT_KEEPS if getattr(args, "keeps", None) is None else args.keeps))


# ---------------------------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------------------------

def llm_layer_flops(text, tokens: int) -> int:
    """FLOPs of one decoder layer over ``tokens`` positions (batch 1): ``2·T·P_layer + 4·T²·H·d_h``."""
    d, f, h, kv, hd = (text.hidden_size, text.intermediate_size, text.num_attention_heads,
                       text.num_key_value_heads, text.head_dim)
    p_layer = d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * f
    return 2 * tokens * p_layer + 4 * tokens * tokens * h * hd


def llm_prefill_flops(cfg, prompt_len: int, *, keep: int | None = None, layer: int = 2, batch: int = 1,
                      pre_llm: bool = False) -> int:
    """FLOPs of the LLM part of the prefill (decoder layers + last-position LM head). With ``keep``: FastV (layers
    ≥ ``layer`` over ``T − N_v + keep`` tokens) or, ``pre_llm=True``, a pre-LLM method (every layer over them)."""
    text = cfg.text
    short = prompt_len - cfg.num_visual_tokens + keep if keep is not None else prompt_len
    start = 0 if pre_llm else layer
    per_layer = [prompt_len if (keep is None or i < start) else short for i in range(text.num_hidden_layers)]
    total = sum(llm_layer_flops(text, t) for t in per_layer) + 2 * text.hidden_size * text.vocab_size
    return batch * total


def relevance_probe_flops(text, tokens: int) -> int:
    """ToDRE stage 2's probe at layer ℓ (batch 1): the q and k projections of layer ℓ's input and the T×T scores
    Q·Kᵀ of every prompt row: ``2·T·D·(H + KV)·d_h + 2·T²·H·d_h`` (softmax and the α sums are O(T²·H), ignored)."""
    d, h, kv, hd = text.hidden_size, text.num_attention_heads, text.num_key_value_heads, text.head_dim
    return 2 * tokens * d * (h + kv) * hd + 2 * tokens * tokens * h * hd


def method_prefill_flops(cfg, prompt_len: int, method, *, fired: bool = False, batch: int = 1) -> int:
    """LLM prefill FLOPs (as :func:`llm_prefill_flops`) of one method object (None = unpruned): pre-LLM methods
    (ToDRE stage 1, DivPrune, random) shorten every layer to ``T − N_v + keep``; FastV the layers ≥ K; ToDRE stage 2
    (``todre-relevance``) adds its probe at layer ℓ and, when it ``fired`` for every row, runs layers ≥ ℓ over
    ``T − N_v`` tokens (otherwise at full length). Raises BenchError for a method it has no formula for."""
    text = cfg.text
    if method is None:
        return llm_prefill_flops(cfg, prompt_len, batch=batch)
    if method.stage == "pre_llm":
        return llm_prefill_flops(cfg, prompt_len, keep=method.keep, batch=batch, pre_llm=True)
    if method.name == "todre-relevance":
        ell = method.resolve_layer(text.num_hidden_layers)
        base = (llm_prefill_flops(cfg, prompt_len, keep=0, layer=ell, batch=batch) if fired
                else llm_prefill_flops(cfg, prompt_len, batch=batch))
        return base + batch * relevance_probe_flops(text, prompt_len)
    if method.stage == "in_llm" and hasattr(method, "keep") and hasattr(method, "layer"):  # FastV
        return llm_prefill_flops(cfg, prompt_len, keep=method.keep, layer=method.layer, batch=batch)
    raise BenchError(f"no prefill FLOP formula for pruning method {method.name!r} (stage {method.stage})")


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

def make_inputs(cfg, batch: int, seed: int = 0, *, bos_id: int | None = None,
                text_range: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Fixed prompt ids int64 [B, T] (bos, 5 text ids, N_v image ids, 8 text ids), mask int64 ones [B, T],
    pixel values float32 [B, 3, H, W] ~ N(0, 1). ``bos_id`` / ``text_range`` ([lo, hi) of the text ids) default to
    the tiny testbed tokenizer's (bos 1, ids after its 5 specials up to the vocabulary size)."""
    from vtp_jax.testbed.hf_llava import BOS_ID, SPECIAL_TOKENS

    rng = np.random.default_rng(seed)
    lo, hi = text_range or (len(SPECIAL_TOKENS), cfg.text.vocab_size)  # after <unk> <s> </s> <pad> <image>
    text = rng.integers(lo, hi, size=PREFIX_TEXT + SUFFIX_TEXT)
    row = ([BOS_ID if bos_id is None else bos_id] + text[:PREFIX_TEXT].tolist() + [cfg.image_token_id] * cfg.num_visual_tokens
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
        result = {"prefill_s": out.prefill_s, "decode_s": out.decode_s, "tokens_per_s": out.tokens_per_s}
        if out.stage2_dropped is not None:  # ToDRE stage 2: did it fire (per row), and its two ratios
            info = out.stages.get("todre-relevance", {})
            result["stage2_dropped"] = [bool(x) for x in np.asarray(out.stage2_dropped)]
            result["alpha_t2v"] = [float(x) for x in np.asarray(info.get("alpha_t2v", []))]
            result["alpha_v2t"] = [float(x) for x in np.asarray(info.get("alpha_v2t", []))]
        return result

    def warmup(self) -> None:
        t0 = time.perf_counter()
        self.run()
        if self.compile_s is None:
            self.compile_s = time.perf_counter() - t0


class TorchRunner:
    """transformers ``LlavaForConditionalGeneration`` (fp32 by default, ``dtype="bfloat16"`` for the full-size
    presets; eval). torch is imported here only.

    Decode time of a ``generate`` call = its total wall time minus its own prefill, where the prefill ends when the
    first logits reach the logits processors (a time stamp taken by a pass-through processor, called once per new
    token, the first time right after the prompt's forward pass). This subtracts the prefill of the same call, so a
    disturbed run cannot yield a negative or inflated decode time. For reference the report also holds the decode
    time computed as generate time minus the median stand-alone prefill (``decode_s_by_subtraction``).
    """

    def __init__(self, hf_dir: str, inputs: dict, max_new_tokens: int, pad_id: int, threads: int | None = None,
                 dtype: str = "float32"):
        import torch
        from transformers import LlavaForConditionalGeneration, LogitsProcessor, LogitsProcessorList

        if threads is not None:
            torch.set_num_threads(threads)
        self.torch = torch
        t0 = time.perf_counter()
        self.model = LlavaForConditionalGeneration.from_pretrained(hf_dir, dtype=getattr(torch, dtype)).eval()
        self.load_s = time.perf_counter() - t0  # from_pretrained wall time, seconds
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
# LLaDA-V (masked diffusion, RedVTP)
# ---------------------------------------------------------------------------------------------------------------

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


def _setting_name(gen_length: int, steps: int, block_length: int) -> str:
    return f"{gen_length}/{steps}"


def diffusion_step_flops(text, tokens: int, logits_rows: int) -> int:
    """FLOPs of one denoising step (batch 1): every decoder layer over ``tokens`` positions + the LM head on
    ``logits_rows`` positions (jax: the response only; LLaDA's loop: every position)."""
    return text.num_hidden_layers * llm_layer_flops(text, tokens) + 2 * logits_rows * text.hidden_size * text.vocab_size


def llada_vision_flops(cfg, num_tiles: int, extra_layers: int = 0) -> int:
    """FLOPs of the SigLIP tower (patch embedding + the stored layers, ``+ extra_layers``) and the ``mlp2x_gelu``
    projector over ``num_tiles`` tiles (batch 1). SigLIP has no class token: S = N_p positions per tile."""
    v = cfg.vision
    n_p = cfg.tokens_per_tile
    d = cfg.text.hidden_size
    patch = 2 * n_p * v.num_channels * v.patch_size**2 * v.hidden_size
    per_layer = 2 * n_p * (4 * v.hidden_size**2 + 2 * v.hidden_size * v.intermediate_size) + 4 * n_p**2 * v.hidden_size
    proj = 2 * n_p * (v.hidden_size * len(cfg.vision_feature_layer) * d + d * d)
    return num_tiles * (patch + (v.num_hidden_layers + extra_layers) * per_layer + proj)


def diffusion_flops(cfg, *, prompt_len: int, num_visual: int, num_tiles: int, gen_length: int, steps: int,
                    keep: int | None = None, reference: bool = False, pre_llm: bool = False) -> int:
    """Analytic FLOPs of one generation (batch 1): vision + projector once, then ``steps`` denoising steps over
    ``prompt_len + gen_length`` positions; with RedVTP / LLaDA-FastV (``keep``) the first step runs at full length
    and the other ``steps − 1`` over ``prompt_len − N_v + keep + gen_length`` (their probe and top-k are O(T·D),
    ignored); with a pre-LLM method (``keep``, ``pre_llm=True``: ToDRE stage 1, DivPrune, random) every step runs
    over the shorter sequence (the selection, O(keep·N_v·D), is ignored).
    ``reference=True`` counts what the PyTorch loop computes instead: one more SigLIP layer (transformers runs the
    layer LLaDA-V deletes) and logits of every position."""
    text = cfg.text
    full = prompt_len + gen_length
    rows = (lambda t: t) if reference else (lambda t: gen_length)
    vision = llada_vision_flops(cfg, num_tiles, extra_layers=1 if reference else 0)
    if keep is None:
        return vision + steps * diffusion_step_flops(text, full, rows(full))
    short = full - num_visual + keep
    if pre_llm:
        return vision + steps * diffusion_step_flops(text, short, rows(short))
    return vision + diffusion_step_flops(text, full, rows(full)) + (steps - 1) * diffusion_step_flops(text, short,
                                                                                                       rows(short))


def make_llada_inputs(model, image_hw: tuple[int, int], seed: int = 0, *, bos_id: int | None = None,
                      text_range: tuple[int, int] | None = None) -> dict[str, Any]:
    """Fixed batch-1 prompt ``bos`` + 5 text ids + N_v image placeholders + 8 text ids (int64 [1, P]), mask ones,
    random pixel values float32 [1, n_tiles, 3, S, S] ~ N(0, 1) for an image of (height, width) ``image_hw``.
    ``bos_id`` / ``text_range`` as in :func:`make_inputs` (defaults: the tiny LLaDA-V testbed tokenizer's)."""
    from vtp_jax.testbed.hf_llada_v import BOS_ID, SPECIAL_TOKENS

    cfg = model.cfg
    layout = model.layout(image_hw)
    n_v = layout.num_tokens
    rng = np.random.default_rng(seed)
    lo, hi = text_range or (len(SPECIAL_TOKENS), cfg.text.vocab_size)
    text = rng.integers(lo, hi, size=PREFIX_TEXT + SUFFIX_TEXT)
    row = [BOS_ID if bos_id is None else bos_id] + text[:PREFIX_TEXT].tolist() + [cfg.image_token_id] * n_v + text[PREFIX_TEXT:].tolist()
    ids = np.asarray([row], np.int64)
    s = cfg.vision.image_size
    pixels = rng.standard_normal((1, layout.num_tiles, cfg.vision.num_channels, s, s)).astype(np.float32)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "pixel_values": pixels,
            "image_size": tuple(int(v) for v in image_hw), "num_visual": n_v, "num_tiles": layout.num_tiles,
            "grid": layout.grid}


class JaxDiffusionRunner:
    """vtp_jax ``DiffusionGenerator`` (greedy) for one setting and one method (None = unpruned)."""

    def __init__(self, model, dcfg, method, inputs: dict):
        from vtp_jax.generation.diffusion import DiffusionGenerator

        self.gen = DiffusionGenerator(model, dcfg, method)
        self.dcfg, self.inputs = dcfg, inputs
        self.image_inputs = {"pixel_values": inputs["pixel_values"], "image_size": inputs["image_size"]}
        self.compile_s: float | None = None  # wall time of the first call (compilation + one run), seconds
        self.last_tokens: np.ndarray | None = None
        self.kept: int | None = None
        # visual tokens that reach the first denoising step (a pre-LLM method's keep): first_step's static argument
        self.num_left = method.keep if method is not None and method.stage == "pre_llm" else inputs["num_visual"]

    def run(self) -> dict:
        out = self.gen.generate(self.inputs["input_ids"], self.inputs["attention_mask"], self.image_inputs,
                                temperature=0.0)
        if out.tokens.shape != (1, self.dcfg.gen_length):
            raise RuntimeError(f"jax run returned shape {out.tokens.shape}, expected (1, {self.dcfg.gen_length})")
        # With random weights the argmax may be the mask id itself; LLaDA's loop then commits it like any token
        # (the reference code does the same), so a mask id in the output is not a failure.
        self.last_tokens, self.kept = np.asarray(out.tokens), int(out.kept.shape[1])
        return {"latency_s": out.latency_s, "encode_s": out.encode_s, "denoise_s": out.denoise_s,
                "tokens_per_s": out.tokens_per_s}

    def warmup(self) -> None:
        t0 = time.perf_counter()
        self.run()
        if self.compile_s is None:
            self.compile_s = time.perf_counter() - t0

    def breakdown(self) -> dict:
        """One generation through the generator's three jitted functions, synchronised after each: seconds of the
        encode (vision + merge), the first denoising step (with RedVTP: scoring and compaction) and the other steps."""
        import jax
        import jax.numpy as jnp

        gen, x = self.gen, self.inputs
        arrays = {"pixel_values": jnp.asarray(x["pixel_values"])}
        static = (("image_size", x["image_size"]),)
        t0 = time.perf_counter()
        prompt = gen.encode(gen.state, jnp.asarray(x["input_ids"], jnp.int32), jnp.asarray(x["attention_mask"]),
                            arrays, static=static)
        jax.block_until_ready(prompt.h)
        t1 = time.perf_counter()
        x_gen, counts, key, prompt, _ = gen.first_step(gen.state, prompt, jax.random.key(0), temperature=0.0,
                                                       num_visual=self.num_left)
        jax.block_until_ready(x_gen)
        t2 = time.perf_counter()
        jax.block_until_ready(gen.denoise(gen.state, prompt, x_gen, counts, key, temperature=0.0))
        t3 = time.perf_counter()
        return {"encode_s": t1 - t0, "first_step_s": t2 - t1, "later_steps_s": t3 - t2}


class TorchDiffusionRunner:
    """The PyTorch reference (:class:`vtp_jax.testbed.torch_llada_v.Reference`, fp32, eval) sampled with LLaDA's loop
    (:func:`vtp_jax.testbed.torch_llada_v.generate`, greedy): latency = wall time of the whole call (vision, every
    step recomputing the full sequence)."""

    def __init__(self, ref, dcfg, inputs: dict):
        from vtp_jax.testbed.torch_llada_v import generate

        self.ref, self.dcfg, self.inputs, self.generate = ref, dcfg, inputs, generate
        self.last_tokens: np.ndarray | None = None

    def run(self) -> dict:
        d, x = self.dcfg, self.inputs
        t0 = time.perf_counter()
        seq = self.generate(self.ref, x["input_ids"], x["attention_mask"], x["pixel_values"], [x["image_size"]],
                            d.gen_length, d.steps, d.block_length, d.remasking, 0.0, mask_id=d.mask_id,
                            suppress_ids=d.suppress_ids)
        latency = time.perf_counter() - t0
        tokens = seq[:, x["input_ids"].shape[1]:].numpy()
        if tokens.shape != (1, d.gen_length) or (tokens == d.mask_id).any():
            raise RuntimeError(f"torch run left masked positions or returned shape {tokens.shape}")
        self.last_tokens = tokens
        return {"latency_s": latency, "tokens_per_s": tokens.size / latency}

    def warmup(self) -> None:
        self.run()


def _agreement(a: np.ndarray | None, b: np.ndarray | None) -> int | None:
    """Leading positions where two greedy outputs [1, G] agree (G = all of them)."""
    if a is None or b is None:
        return None
    same = (a == b).all(axis=0)
    return int(same.size) if same.all() else int(np.argmin(same))


def run_llada_v(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
    """Runs the LLaDA-V section and returns its JSON-able report (see the module docstring for units)."""
    import jax

    from convert import convert
    from vtp_jax.checkpoint import load
    from vtp_jax.generation.diffusion import DiffusionConfig
    from vtp_jax.testbed.hf_llada_v import SUPPRESS_IDS, tiny_llada_v_config

    if args.runs < 1 or args.warmup < 0:
        raise BenchError("need --runs ≥ 1, --warmup ≥ 0")
    _, methods, keep_pcts = _selection(args)
    load_start, busy_before = _load_before()
    preset = dict(LLADA_V_PRESETS[args.preset])
    image_hw = tuple(preset.pop("image"))
    hf_config = tiny_llada_v_config(**preset)

    log("-" * 100)
    log("LLaDA-V (masked diffusion): PyTorch reference (LLaDA's loop) vs vtp_jax, unpruned and every pruning method")
    log("-" * 100)
    _warn_busy(busy_before, log)
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
    max_gen = max(g for g, _, _ in LLADA_V_SETTINGS)
    if prompt_len + max_gen > cfg.text.max_position_embeddings:
        raise BenchError(f"prompt ({prompt_len}) + gen_length ({max_gen}) exceeds max positions")
    n_layers = cfg.text.num_hidden_layers
    # Variants per setting: (name, method name, keep %); the method objects and keep counts by variant name.
    specs_by_setting = {
        _setting_name(*LLADA_V_SETTINGS[0]): variant_specs(methods, keep_pcts),
        **{_setting_name(*st): [("jax none", None, None)] + [(variant_name(m, k), m, k)
                                                              for m, k in SHORT_SETTING_VARIANTS]
           for st in LLADA_V_SETTINGS[1:]},
    }
    method_objs: dict[str, Any] = {}
    spec_of: dict[str, tuple[str | None, float | None]] = {}
    for specs in specs_by_setting.values():
        for name, m, pct in specs:
            if name not in method_objs:
                method_objs[name] = build_variant_method(m, "llada_v", n_v, n_layers, pct)
                spec_of[name] = (m, pct)
    keeps: dict[str, int | None] = {name: getattr(obj, "keep", None) for name, obj in method_objs.items()}
    device = jax.devices()[0]
    report["env"] = {
        "jax_version": jax.__version__, "platform": device.platform, "device_kind": device.device_kind,
        "jax_device_count": jax.device_count(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "machine": platform.machine(), "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "loadavg_start": load_start, "foreign_cpu_share_before": busy_before,
    }
    if ref is not None:
        report["env"].update({"torch_version": torch.__version__, "torch_num_threads": torch.get_num_threads(),
                              "torch_attn_implementation": args.torch_attn})
    v, t = cfg.vision, cfg.text
    report["settings"] = {
        "runs": args.runs, "warmup": args.warmup, "batch": 1, "prompt_len": prompt_len, "num_visual_tokens": n_v,
        "num_tiles": n_tiles, "grid": list(inputs["grid"]), "tokens_per_tile": cfg.tokens_per_tile,
        "visual_fraction": {_setting_name(*s): n_v / (prompt_len + s[0]) for s in LLADA_V_SETTINGS},
        "diffusion": [{"gen_length": g, "steps": st, "block_length": bl, "remasking": "low_confidence",
                       "temperature": 0.0} for g, st, bl in LLADA_V_SETTINGS],
        "keep": {name: (n_v if k is None else k) for name, k in keeps.items()},
        "methods": methods, "keeps_percent": keep_pcts,
        "variants": {sname: [name for name, _, _ in specs] for sname, specs in specs_by_setting.items()},
    }
    log(f"model: SigLIP {v.num_hidden_layers}L×{v.hidden_size} @ {v.image_size}px/{v.patch_size} "
        f"({cfg.tokens_per_tile} features per tile); image {image_hw[0]}×{image_hw[1]} → grid "
        f"{inputs['grid'][0]}×{inputs['grid'][1]} + base tile → {n_v} visual tokens; LLaDA {t.num_hidden_layers}L×"
        f"{t.hidden_size} ({t.num_attention_heads} heads, MLP {t.intermediate_size}, vocab {t.vocab_size})")
    log(f"prompt: {prompt_len} tokens ({n_v} visual), batch 1; settings gen_length/steps "
        + ", ".join(f"{g}/{st} (block {bl})" for g, st, bl in LLADA_V_SETTINGS)
        + f"; {args.warmup} warm-up + {args.runs} timed runs per variant")

    # Runners per setting: torch first when present.
    runners: dict[str, dict[str, Any]] = {}
    dcfgs = {}
    for g, st, bl in LLADA_V_SETTINGS:
        sname = _setting_name(g, st, bl)
        dcfg = DiffusionConfig(gen_length=g, block_length=bl, steps=st, mask_id=int(cfg.mask_token_id),
                               suppress_ids=tuple(i for i in SUPPRESS_IDS if i != cfg.mask_token_id))
        dcfgs[sname] = dcfg
        runners[sname] = {}
        if ref is not None:
            runners[sname]["torch"] = TorchDiffusionRunner(ref, dcfg, inputs)
        for name, _, _ in specs_by_setting[sname]:
            runners[sname][name] = JaxDiffusionRunner(model, dcfg, method_objs[name], inputs)

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
            later = 1e3 * _median([p["later_steps_s"] for p in parts])
            breakdown[sname][name] = {
                "encode_ms": 1e3 * _median([p["encode_s"] for p in parts]),
                "first_step_ms": 1e3 * _median([p["first_step_s"] for p in parts]),
                "later_steps_ms": later,
                "later_step_ms_each": later / (steps - 1) if steps > 1 else None,
                "runs": len(parts),
            }
    report["env"]["loadavg_end"] = _loadavg()
    report["env"]["foreign_cpu_share_during_runs"] = foreign_runs
    report["raw_runs"] = raw
    report["time_split_ms"] = breakdown

    # Aggregate per setting.
    sections: dict[str, dict] = {}
    flops_vision = llada_vision_flops(cfg, n_tiles)
    for (g, st, bl), (sname, variants) in zip(LLADA_V_SETTINGS, runners.items()):
        rows: dict[str, dict] = {}
        for name, runs in raw[sname].items():
            method, pct = spec_of.get(name, (None, None))
            rows[name] = llada_row(runs, name=name, obj=method_objs.get(name), method=method, pct=pct,
                                   keep=keeps.get(name), compile_s=getattr(variants[name], "compile_s", None), cfg=cfg,
                                   prompt_len=prompt_len, n_v=n_v, n_tiles=n_tiles, gen_length=g, steps=st)
        add_llada_ratios(rows)
        torch_row = rows.get("torch")
        agree = _agreement(variants["torch"].last_tokens, variants["jax none"].last_tokens) if torch_row else None
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
    first = _setting_name(*LLADA_V_SETTINGS[0])
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
    fl = diffusion_flops(cfg, prompt_len=prompt_len, num_visual=n_v, num_tiles=n_tiles, gen_length=g, steps=steps,
                         keep=keep, reference=name == "torch", pre_llm=obj is not None and obj.stage == "pre_llm")
    return {
        "method": "none" if method is None else method,
        "stage": None if obj is None else obj.stage,
        "keep_percent": 100.0 if method is None else pct,
        "visual_tokens_kept": n_v if keep is None else keep,
        "seq_len_after_pruning": prompt_len + g - (0 if keep is None else n_v - keep),
        "latency_ms": 1e3 * _median(lat),
        "latency_ms_min": 1e3 * min(lat),
        "latency_ms_runs": [1e3 * x for x in lat],
        "tokens_per_s": g / _median(lat),
        "tokens_per_s_max": g / min(lat),
        "encode_ms": (1e3 * _median([x["encode_s"] for x in runs]) if "encode_s" in runs[0] else None),
        "denoise_ms": (1e3 * _median([x["denoise_s"] for x in runs]) if "denoise_s" in runs[0] else None),
        "flops": fl,
        "compile_s": compile_s,
    }


def add_llada_ratios(rows: dict[str, dict]) -> None:
    """Adds to every row: token-throughput gain over ``jax none`` (median and best of runs), × ``torch``, FLOP
    ratio jax none / variant."""
    base = rows["jax none"]
    torch_row = rows.get("torch")
    for row in rows.values():
        tps_ratio = _ratio(row["tokens_per_s"], base["tokens_per_s"])
        row["throughput_gain_vs_jax_none"] = None if tps_ratio is None else tps_ratio - 1.0
        best = _ratio(row["tokens_per_s_max"], base["tokens_per_s_max"])
        row["throughput_gain_vs_jax_none_best_of_runs"] = None if best is None else best - 1.0
        row["x_torch"] = _ratio(row["tokens_per_s"], torch_row["tokens_per_s"]) if torch_row else None
        row["flop_ratio_vs_jax_none"] = _ratio(base["flops"], row["flops"])


def _gain(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.0f}%"


def _keep_pct(pct: float | None) -> str:
    return "—" if pct is None else keep_label(pct)


def _table(cols: list[tuple[str, int, str]], rows: list[list]) -> list[str]:
    """Header, rule and rows; ``cols`` = (title, width, "<" | ">"); width 0 = as wide as needed (last column)."""
    def line(cells):
        return "".join(format(str(c), f"{align}{w}") if w else " " + str(c)
                       for c, (_, w, align) in zip(cells, cols)).rstrip()

    header = line([t for t, _, _ in cols])
    return [header, "-" * len(header)] + [line(r) for r in rows]


def _stage2_note(stage2: dict | None) -> str:
    """todre-relevance: whether it fired (dropped every visual token from layer ℓ on) and its ratios (first row)."""
    if not stage2:
        return ""
    a_tv = stage2["alpha_t2v"][0] if stage2["alpha_t2v"] else float("nan")
    a_vt = stage2["alpha_v2t"][0] if stage2["alpha_v2t"] else float("nan")
    what = ("FIRED" if stage2["fired"] else "did not fire" if not stage2["fired_runs"]
            else f"fired in {stage2['fired_runs']} of {stage2['runs']} runs")
    return f"{what} at ℓ={stage2['layer']} (α_t→v {a_tv:.3f}, α_v→t {a_vt:.3f}; τ {stage2['tau']:.2f})"


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
             f"CPU share used by other processes: {_fmt(_pct(env.get('foreign_cpu_share_before')), '.0f', ' %')} "
             f"just before, {_fmt(_pct(env.get('foreign_cpu_share_during_runs')), '.0f', ' %')} during the timed runs"
             f" (1-min load average {_fmt(env.get('loadavg_start'), '.2f')} → {_fmt(env.get('loadavg_end'), '.2f')})"]
    if (env.get("foreign_cpu_share_during_runs") or 0.0) > FOREIGN_LOAD_WARN:
        lines.append("WARNING: other processes competed for the CPUs during the timed runs; the timings (torch's "
                     "above all) are not representative of an idle machine and PASS / MISS is unreliable")
    cols = [("setting", 8, "<"), ("variant", 22, "<"), ("method", 13, "<"), ("keep %", 7, ">"), ("kept", 6, ">"),
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
            table.append([sname, name, "torch" if name == "torch" else r["method"], _keep_pct(r["keep_percent"]),
                          r["visual_tokens_kept"], r["seq_len_after_pruning"], f"{r['latency_ms']:.1f}",
                          f"{r['latency_ms_min']:.1f}", f"{r['tokens_per_s']:.2f}",
                          _gain(r["throughput_gain_vs_jax_none"]), _fmt(r["x_torch"], ".2f", "×"),
                          f"{r['flops'] / 1e9:.3f}", _fmt(r["flop_ratio_vs_jax_none"], ".2f", "×"),
                          _fmt(r["encode_ms"], ".1f"), split_s, _fmt(r["compile_s"], ".1f")])
    lines += [""] + _table(cols, table)
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
    mark = "" if report["targets"]["reliable"] else " (unreliable: CPUs shared with other processes)"
    lines += ["",
              f"RedVTP keep 50% token-throughput gain at {t['setting']}: {_gain(t['value']):>6}  "
              f"(target ≥ {_gain(t['target'])})  {t['status']}{mark if t['status'] != 'SKIPPED' else ''}   "
              f"[best of runs: "
              f"{_gain(t['value_best_of_runs'])}; FLOP bound: "
              f"{_gain(None if t['flop_ratio'] is None else t['flop_ratio'] - 1.0)}]",
              ""]
    return "\n".join(lines)


def _warn_busy(busy_before: float | None, log: Callable[[str], None]) -> None:
    if (busy_before or 0.0) > FOREIGN_LOAD_WARN:
        log(f"WARNING: other processes used {100 * busy_before:.0f} % of the CPUs in the second before this section: "
            "timings will be noisy (torch's multi-threaded ops most of all)")


# ---------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vtp-bench", description=__doc__.splitlines()[0].split(": ", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=RANDOM_WEIGHTS_NOTE + ".")
    p.add_argument("--family", choices=["llava", "llada_v", "all"], default="all",
                   help="which section(s) to run: LLaVA, LLaDA-V or both (default all)")
    p.add_argument("--methods", default=None, metavar="M1,M2,...",
                   help="LLaVA: pruning methods to time, comma-separated (default: every one registered for LLaVA "
                        f"except {', '.join(NOT_BENCHED)}: {', '.join(family_methods('llava'))}; \"\" = none)")
    p.add_argument("--llada-methods", default=None, metavar="M1,M2,...",
                   help="LLaDA-V, setting 32/16: pruning methods to time, comma-separated (default: every one "
                        f"registered for LLaDA-V: {', '.join(family_methods('llada_v'))}; \"\" = none); the 2/2 "
                        "setting always times none, redvtp-50 and redvtp-25")
    p.add_argument("--keeps", default=DEFAULT_KEEPS, metavar="P1,P2,...",
                   help="percentages of the visual tokens kept, each a variant of every method that takes a keep "
                        f"count, both families (default {DEFAULT_KEEPS})")
    p.add_argument("--preset", choices=sorted(PRESETS) + list(FULL_SIZE_PRESETS), default="tiny",
                   help="model sizes of every section (default tiny); llava-1.5-7b / llada-v-8b: the real model's "
                        "shapes with RANDOM weights, one family, torch and jax in separate subprocesses "
                        "(eval/full_size_bench.py)")
    p.add_argument("--layers", type=int, default=None,  # range [1, 32] checked by full_size.check_preset
                   help="full-size presets: decoder layers to build (1..32, default 32) for quicker runs")
    p.add_argument("--cache-dir", default=None,
                   help="full-size presets: where the random-weight checkpoints are cached (default $VTP_CACHE or "
                        "~/.cache/vtp_jax/presets)")
    p.add_argument("--llada-image", default=None, metavar="HxW",
                   help="llada-v-8b: image height x width in pixels, which sets the anyres grid and N_v "
                        "(default 480x640: 2929 visual tokens)")
    for key in PRESETS["tiny"]:
        p.add_argument("--" + key.replace("_", "-"), type=argtypes.POSITIVE, default=None,
                       help=f"override the LLaVA preset's {key} (full-size presets: tests only, a reduced model)")
    p.add_argument("--runs", type=argtypes.POSITIVE, default=5,
                   help="timed runs per variant, ≥ 1; medians are reported (default 5)")
    p.add_argument("--warmup", type=argtypes.NON_NEGATIVE, default=1,
                   help="untimed runs per variant before timing, ≥ 0 (jax always makes at least one: the first call "
                        "compiles; default 1)")
    p.add_argument("--max-new-tokens", type=argtypes.integer(2), default=32,
                   help="LLaVA: tokens generated per run, ≥ 2 (default 32)")
    p.add_argument("--batch", type=argtypes.POSITIVE, default=1,
                   help="LLaVA: batch size (the prompt repeated; default 1; LLaDA-V always runs batch 1)")
    p.add_argument("--fastv-layer", type=argtypes.POSITIVE, default=2, help="LLaVA: FastV decoder layer K (default 2)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch baselines")
    p.add_argument("--torch-threads", type=argtypes.POSITIVE, default=None,
                   help="torch.set_num_threads for the baselines (default: torch's own default, left untouched)")
    p.add_argument("--torch-attn", choices=["sdpa", "eager"], default="sdpa",
                   help="LLaDA-V: attention of the PyTorch reference's decoder (default sdpa, as LLaDA's own code)")
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


def _load_before() -> tuple[float | None, float | None]:
    """(1-min load average, other processes' CPU share over the next second) — taken before a section's work."""
    load = _loadavg()
    probe = ForeignLoad()
    time.sleep(1.0)
    return load, probe.share()


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


def run_llava(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
    """Runs the LLaVA section and returns its JSON-able report (see the module docstring for units)."""
    import jax

    from vtp_jax.checkpoint import load
    from vtp_jax.testbed.hf_llava import PAD_ID, tiny_llava_config

    if args.runs < 1 or args.warmup < 0 or args.max_new_tokens < 2 or args.batch < 1:
        raise BenchError("need --runs ≥ 1, --warmup ≥ 0, --max-new-tokens ≥ 2, --batch ≥ 1")
    methods, _, keep_pcts = _selection(args)
    load_start, busy_before = _load_before()
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
    _warn_busy(busy_before, log)
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
        report["env"] = {
            "jax_version": jax.__version__, "platform": device.platform, "device_kind": device.device_kind,
            "jax_device_count": jax.device_count(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "machine": platform.machine(), "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
            "loadavg_start": load_start, "foreign_cpu_share_before": busy_before,
        }
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
        objs = {name: build_variant_method(m, "llava", n_v, cfg.text.num_hidden_layers, pct,
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
        report["env"]["loadavg_end"] = _loadavg()
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
        a, b = variants["torch"].last_tokens, variants["jax none"].last_tokens
        same = (a == b).all(axis=0)
        agreement = int(np.argmin(same)) if not same.all() else int(same.size)

    decode_x = base["decode_x_torch"]
    f25 = rows.get("jax fastv-25")  # absent when --methods / --keeps leave it out
    fastv25 = None if f25 is None else f25["prefill_speedup_vs_jax_none"]
    decode_x_best = _ratio(base["decode_tokens_per_s_max"], torch_row["decode_tokens_per_s_max"]) if torch_row else None
    fastv25_best = None if f25 is None else _ratio(base["prefill_ms_min"], f25["prefill_ms_min"])
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
              prompt_len: int, n: int, batch: int, vision_flops_: int) -> dict:
    """One LLaVA table row from a variant's timed runs (each ``{"prefill_s", "decode_s", "tokens_per_s", ...}``,
    seconds / tokens per second): medians and bests in ms and tokens/s, kept tokens, analytic FLOPs (ToDRE stage 2's
    depend on whether it fired in every run). Ratios come from :func:`add_llava_ratios`."""
    n_v = cfg.num_visual_tokens
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
    llm_flops = method_prefill_flops(cfg, prompt_len, obj, fired=fired, batch=batch)
    return {
        "method": "none" if method is None else method,
        "stage": None if obj is None else obj.stage,
        "keep_percent": 100.0 if method is None else pct,
        "prefill_ms": 1e3 * _median([x["prefill_s"] for x in runs]),
        "decode_tokens_per_s": _median([x["tokens_per_s"] for x in runs]),
        "decode_ms_per_step": 1e3 * _median([x["decode_s"] for x in runs]) / (n - 1),
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
        row["prefill_speedup_vs_jax_none"] = _ratio(base["prefill_ms"], row["prefill_ms"])
        row["decode_x_torch"] = (_ratio(row["decode_tokens_per_s"], torch_row["decode_tokens_per_s"])
                                 if torch_row else None)
        row["llm_flop_ratio_vs_jax_none"] = _ratio(base["llm_prefill_flops"], row["llm_prefill_flops"])
        row["prefill_flop_ratio_vs_jax_none"] = _ratio(base["prefill_flops"], row["prefill_flops"])


def run_bench(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
    """Runs the sections that ``--family`` selects and returns the JSON-able report: ``{"random_weights": true,
    "note", "families": [...], "llava": {...}, "llada_v": {...}}`` (a section is absent when not run)."""
    if args.preset in FULL_SIZE_PRESETS:
        return run_full_size_bench(args, log)
    if getattr(args, "layers", None) is not None or getattr(args, "llada_image", None) is not None:
        raise BenchError("--layers / --llada-image apply only to the full-size presets (llava-1.5-7b, llada-v-8b)")
    families = ["llava", "llada_v"] if args.family == "all" else [args.family]
    _selection(args)  # bad --methods / --llada-methods / --keeps: fail before anything runs
    log("=" * 100)
    log(f"vtp-bench — {RANDOM_WEIGHTS_NOTE.upper()}")
    log("=" * 100)
    report: dict[str, Any] = {"random_weights": True, "note": RANDOM_WEIGHTS_NOTE, "families": families}
    for family in families:
        t0 = time.perf_counter()
        report[family] = (run_llava if family == "llava" else run_llada_v)(args, log)
        report[family]["section_wall_s"] = time.perf_counter() - t0
        log(f"{family} section: {report[family]['section_wall_s']:.0f} s")
    return report


def run_full_size_bench(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
    """A full-size preset (:mod:`eval.full_size_bench`): ``{"random_weights": true, "note", "families": [family],
    family: section}`` with the section's ``"full_size": true``."""
    from eval.full_size_bench import run_full_size, validate

    family = validate(args)["family"]  # every flag checked before anything runs
    log("=" * 100)
    log(f"vtp-bench --preset {args.preset} — {RANDOM_WEIGHTS_NOTE.upper()}")
    log("=" * 100)
    t0 = time.perf_counter()
    section = run_full_size(args, log)
    section["section_wall_s"] = time.perf_counter() - t0
    log(f"{args.preset}: {section['section_wall_s']:.0f} s")
    return {"random_weights": True, "note": RANDOM_WEIGHTS_NOTE, "families": [family], family: section}


def format_report(report: dict) -> str:
    """The human-readable tables and target lines of every section that ran."""
    parts = ["", "#" * 100, f"# {RANDOM_WEIGHTS_NOTE.upper()}", "#" * 100]
    if any(report.get(f, {}).get("full_size") for f in report.get("families", [])):
        from eval.full_size_bench import format_full_size

        return "\n".join(parts + [format_full_size(report[f]) for f in report["families"]])
    if "llava" in report:
        parts.append(format_llava(report["llava"]))
    if "llada_v" in report:
        parts.append(format_llada_v(report["llada_v"]))
    return "\n".join(parts)


def format_llava(report: dict) -> str:
    """The LLaVA section's table and target lines."""
    rows, env, s = report["rows"], report["env"], report["settings"]
    lines = ["", "LLaVA — autoregressive generation, every pruning method (transformers vs vtp_jax)", "=" * 100,
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
    cols = [("variant", 22, "<"), ("method", 16, "<"), ("keep %", 7, ">"), ("kept", 6, ">"), ("LLM T", 7, ">"),
            ("prefill ms", 12, ">"), ("best ms", 9, ">"), ("decode tok/s", 13, ">"), ("best tok/s", 11, ">"),
            ("prefill ×", 10, ">"), ("dec ×torch", 11, ">"), ("LLM GFLOP", 10, ">"), ("FLOP ×", 8, ">"),
            ("compile s", 10, ">"), ("note", 0, "<")]
    table = []
    for name, r in rows.items():
        table.append([name, "torch" if name == "torch" else r["method"], _keep_pct(r["keep_percent"]),
                      r["visual_tokens_kept"], r["llm_tokens_after_pruning"], f"{r['prefill_ms']:.1f}",
                      f"{r['prefill_ms_min']:.1f}", f"{r['decode_tokens_per_s']:.1f}",
                      f"{r['decode_tokens_per_s_max']:.1f}", _fmt(r["prefill_speedup_vs_jax_none"], ".2f", "×"),
                      _fmt(r["decode_x_torch"], ".2f", "×"), f"{r['llm_prefill_flops'] / 1e9:.3f}",
                      _fmt(r["llm_flop_ratio_vs_jax_none"], ".2f", "×"), _fmt(r["compile_s"], ".1f"),
                      _stage2_note(r.get("stage2"))])
    lines += _table(cols, table)
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
    mark = "" if t["reliable"] else " (unreliable: CPUs shared with other processes)"
    lines += ["",
              f"decode tokens/s jax / torch:          {_fmt(d['value'], '.2f', '×'):>8}  "
              f"(target ≥ {d['target']}×)  "
              f"{d['status']}{mark if d['status'] != 'SKIPPED' else ''}   [best of runs: {_fmt(d['value_best_of_runs'], '.2f', '×')}]",
              f"FastV keep 25% prefill speed-up:      {_fmt(f['value'], '.2f', '×'):>8}  "
              f"(target ≥ {f['target']}×)  "
              f"{f['status']}{mark if f['status'] != 'SKIPPED' else ''}   [best of runs: "
              f"{_fmt(f['value_best_of_runs'], '.2f', '×')}; FLOP ratio: LLM {_fmt(f['llm_flop_ratio'], '.2f', '×')}, "
              f"whole prefill {_fmt(f['prefill_flop_ratio'], '.2f', '×')}]",
              ""]
    return "\n".join(lines)


def check_json_path(path: str | None) -> None:
    """``--json PATH`` before anything runs: PATH is not a folder and its folder exists and takes a file (tried
    with a temporary file, removed at once). Raises BenchError naming the path."""
    if path is None:
        return
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise BenchError(f"--json: {path} is a folder")
    if not os.path.isdir(parent):
        raise BenchError(f"--json: folder {parent} does not exist")
    try:
        fd, probe = tempfile.mkstemp(prefix=".vtp-bench-probe-", dir=parent)
    except OSError as e:
        raise BenchError(f"--json: cannot write into {parent}: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(probe)


def main(argv: list[str] | None = None) -> int:
    """Console entry point. Returns 0 (targets missed is not an error), 2 on bad arguments (argparse usage errors
    return 2 instead of raising SystemExit)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # usage error (2) or --help (0); argparse has printed its message
        return int(e.code or 0)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    from eval.full_size_bench import FullSizeError

    try:
        check_json_path(args.json)
        report = run_bench(args, log)
    except BenchError as e:
        print(f"vtp-bench: error: {e}", file=sys.stderr)
        return 2
    except FullSizeError as e:
        print(f"vtp-bench: error: {e}", file=sys.stderr)
        return 1
    print(format_report(report), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    # ``python -m eval.bench`` runs this file as __main__, a second copy whose BenchError is not the one
    # eval.full_size_bench raises: run the importable module's main so every error is caught (exit 2, no traceback).
    from eval.bench import main as _module_main

    sys.exit(_module_main())
