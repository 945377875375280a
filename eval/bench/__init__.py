"""``vtp-bench``: speed of LLaVA and LLaDA-V generation, every pruning method at keep 50/25/10 % — PyTorch vs vtp_jax.

**The weights are RANDOM.** Each section writes a random-weight checkpoint on disk, converts it with
:func:`convert.convert` and loads it with :func:`vtp_jax.checkpoint.load`. It measures speed only; the generated text
is meaningless. ``--family llava|llada_v|all`` (default all) picks the sections; ``--json`` holds one object per
section under ``"llava"`` / ``"llada_v"``. ``--preset micro|tiny|small`` sizes both sections.
``--mesh data=D,fsdp=F,tensor=T`` (repeatable) replaces the timed sections by a report of what device meshes cost
and change — per-device memory of the compiled steps for a full-size preset, sharded == unsharded generation for a
bench preset — correctness and memory only (:mod:`eval.bench.mesh`).

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

``--preset llava-1.5-7b`` / ``llava-next-7b`` / ``llada-v-8b`` (``--layers N``: decoder depth 1..32, default 32): the real
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

Package layout
==============

Imports point down, from the front end to the leaves:

* :mod:`eval.bench.cli` — flags, :func:`run_bench` (each section by its family's generator kind), the full-size
  presets, :func:`format_report`, :func:`main` (``vtp-bench``, ``python -m eval.bench``);
* :mod:`eval.bench.autoregressive` — the LLaVA section (:func:`run_llava`, :func:`llava_row`, :func:`format_llava`);
* :mod:`eval.bench.diffusion` — the LLaDA-V section (:func:`run_llada_v`, :func:`llada_row`, :func:`format_llada_v`);
* :mod:`eval.bench.runners` — the jax and torch runners of both generator kinds and their inputs;
* :mod:`eval.bench.flops` — the analytic FLOP models;
* :mod:`eval.bench.methods` — ``--methods`` / ``--llada-methods`` / ``--keeps`` and the variants;
* :mod:`eval.bench.report` — statistics, ratios, number formatting and the text table;
* :mod:`eval.bench.load` — other processes' CPU share and the load average;
* :mod:`eval.bench.errors` — :class:`BenchError`.

The names other code uses are re-exported here (``from eval import bench; bench.main(...)``).
"""

from eval.bench.autoregressive import (
    PRESETS, TARGET_DECODE_VS_TORCH, TARGET_FASTV25_PREFILL, add_llava_ratios, build_checkpoint, format_llava,
    llava_row, run_llava, stage2_note,
)
from eval.bench.cli import (
    DESCRIPTION, FULL_SIZE_PRESETS, SECTION_FORMATTERS, SECTION_RUNNERS, build_parser, check_json_path,
    format_report, main, run_bench, run_full_size_bench,
)
from eval.bench.diffusion import (
    BREAKDOWN_RUNS, LLADA_V_PRESETS, LLADA_V_SETTINGS, SHORT_SETTING_VARIANTS, TARGET_REDVTP50_GAIN,
    add_llada_ratios, format_llada_v, llada_row, run_llada_v, setting_name,
)
from eval.bench.errors import BenchError
from eval.bench.flops import (
    diffusion_flops, diffusion_step_flops, llada_vision_flops, llm_layer_flops, llm_prefill_flops,
    method_prefill_flops, relevance_probe_flops, vision_flops,
)
from eval.bench.load import FOREIGN_LOAD_WARN, ForeignLoad, cpu_jiffies, load_before, loadavg, warn_busy
from eval.bench.methods import (
    DEFAULT_KEEPS, METHOD_ORDER, METHODS_FLAG, NOT_BENCHED, build_variant_method, check_selection, family_methods,
    keep_label, methods_flag, parse_keeps, parse_methods, selection, takes_keep, variant_name, variant_specs,
)
from eval.bench.report import RANDOM_WEIGHTS_NOTE, greedy_agreement, median, ratio, text_table
from eval.bench.runners import (
    PREFIX_TEXT, SUFFIX_TEXT, JaxDiffusionRunner, JaxRunner, TorchDiffusionRunner, TorchRunner, jax_environment,
    make_inputs, make_llada_inputs,
)

__all__ = [
    # front end
    "DESCRIPTION", "FULL_SIZE_PRESETS", "SECTION_FORMATTERS", "SECTION_RUNNERS", "BenchError", "build_parser",
    "check_json_path", "format_report", "main", "run_bench", "run_full_size_bench",
    # sections
    "PRESETS", "TARGET_DECODE_VS_TORCH", "TARGET_FASTV25_PREFILL", "add_llava_ratios", "build_checkpoint",
    "format_llava", "llava_row", "run_llava", "stage2_note",
    "BREAKDOWN_RUNS", "LLADA_V_PRESETS", "LLADA_V_SETTINGS", "SHORT_SETTING_VARIANTS", "TARGET_REDVTP50_GAIN",
    "add_llada_ratios", "format_llada_v", "llada_row", "run_llada_v", "setting_name",
    # runners and inputs
    "PREFIX_TEXT", "SUFFIX_TEXT", "JaxDiffusionRunner", "JaxRunner", "TorchDiffusionRunner", "TorchRunner",
    "jax_environment", "make_inputs", "make_llada_inputs",
    # FLOPs
    "diffusion_flops", "diffusion_step_flops", "llada_vision_flops", "llm_layer_flops", "llm_prefill_flops",
    "method_prefill_flops", "relevance_probe_flops", "vision_flops",
    # methods and variants
    "DEFAULT_KEEPS", "METHOD_ORDER", "METHODS_FLAG", "NOT_BENCHED", "build_variant_method", "check_selection",
    "family_methods", "keep_label", "methods_flag", "parse_keeps", "parse_methods", "selection", "takes_keep",
    "variant_name", "variant_specs",
    # report helpers and load
    "RANDOM_WEIGHTS_NOTE", "greedy_agreement", "median", "ratio", "text_table",
    "FOREIGN_LOAD_WARN", "ForeignLoad", "cpu_jiffies", "load_before", "loadavg", "warn_busy",
]
