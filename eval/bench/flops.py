"""Analytic FLOP models of ``vtp-bench`` (one multiply-add = 2 FLOPs; every product counted densely; norms, RoPE,
softmax and residual adds, O(T·D), ignored).

* :func:`llm_layer_flops` — one decoder layer over T tokens: ``2·T·P_layer + 4·T²·H·d_h`` (q, k, v, o projections,
  the SwiGLU MLP, and Q·Kᵀ and P·V over the full T×T score matrix: what the dense kernel computes).
* Autoregressive (LLaVA) prefill: :func:`llm_prefill_flops`, :func:`method_prefill_flops` (per pruning method),
  :func:`relevance_probe_flops` (ToDRE stage 2's probe) and :func:`vision_flops` (CLIP tower + projector).
* Masked diffusion (LLaDA-V) generation: :func:`diffusion_step_flops`, :func:`llada_vision_flops` (SigLIP tower +
  projector over the anyres tiles) and :func:`diffusion_flops` (one whole generation, per pruning method).

The formulas, with the T_l of every method, are spelled out in :mod:`eval.bench`'s description.
"""

from __future__ import annotations

from eval.bench.errors import BenchError


def llm_layer_flops(text, tokens: int) -> int:
    """FLOPs of one decoder layer over ``tokens`` positions (batch 1): ``2·T·P_layer + 4·T²·H·d_h``."""
    d, f, h, kv, hd = (text.hidden_size, text.intermediate_size, text.num_attention_heads,
                       text.num_key_value_heads, text.head_dim)
    p_layer = d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * f
    return 2 * tokens * p_layer + 4 * tokens * tokens * h * hd


def llm_prefill_flops(cfg, prompt_len: int, *, keep: int | None = None, layer: int = 2, batch: int = 1,
                      pre_llm: bool = False, num_visual: int | None = None) -> int:
    """FLOPs of the LLM part of the prefill (decoder layers + last-position LM head). With ``keep``: FastV (layers
    ≥ ``layer`` over ``T − N_v + keep`` tokens) or, ``pre_llm=True``, a pre-LLM method (every layer over them).
    ``num_visual``: N_v of the prompt (default ``cfg.num_visual_tokens``; LLaVA-NeXT: the image's own layout)."""
    text = cfg.text
    n_v = cfg.num_visual_tokens if num_visual is None else num_visual
    short = prompt_len - n_v + keep if keep is not None else prompt_len
    start = 0 if pre_llm else layer
    per_layer = [prompt_len if (keep is None or i < start) else short for i in range(text.num_hidden_layers)]
    total = sum(llm_layer_flops(text, t) for t in per_layer) + 2 * text.hidden_size * text.vocab_size
    return batch * total


def relevance_probe_flops(text, tokens: int) -> int:
    """ToDRE stage 2's probe at layer ℓ (batch 1): the q and k projections of layer ℓ's input and the T×T scores
    Q·Kᵀ of every prompt row: ``2·T·D·(H + KV)·d_h + 2·T²·H·d_h`` (softmax and the α sums are O(T²·H), ignored)."""
    d, h, kv, hd = text.hidden_size, text.num_attention_heads, text.num_key_value_heads, text.head_dim
    return 2 * tokens * d * (h + kv) * hd + 2 * tokens * tokens * h * hd


def method_prefill_flops(cfg, prompt_len: int, method, *, fired: bool = False, batch: int = 1,
                         num_visual: int | None = None) -> int:
    """LLM prefill FLOPs (as :func:`llm_prefill_flops`) of one method object (None = unpruned): pre-LLM methods
    (ToDRE stage 1, DivPrune, random) shorten every layer to ``T − N_v + keep``; FastV the layers ≥ K; ToDRE stage 2
    (``todre-relevance``) adds its probe at layer ℓ and, when it ``fired`` for every row, runs layers ≥ ℓ over
    ``T − N_v`` tokens (otherwise at full length). ``num_visual`` as in :func:`llm_prefill_flops`. Raises BenchError
    for a method it has no formula for."""
    text = cfg.text
    nv = {"num_visual": num_visual}
    if method is None:
        return llm_prefill_flops(cfg, prompt_len, batch=batch, **nv)
    if method.stage == "pre_llm":
        return llm_prefill_flops(cfg, prompt_len, keep=method.keep, batch=batch, pre_llm=True, **nv)
    if method.name == "todre-relevance":
        ell = method.resolve_layer(text.num_hidden_layers)
        base = (llm_prefill_flops(cfg, prompt_len, keep=0, layer=ell, batch=batch, **nv) if fired
                else llm_prefill_flops(cfg, prompt_len, batch=batch, **nv))
        return base + batch * relevance_probe_flops(text, prompt_len)
    if method.stage == "in_llm" and hasattr(method, "keep") and hasattr(method, "layer"):  # FastV
        return llm_prefill_flops(cfg, prompt_len, keep=method.keep, layer=method.layer, batch=batch, **nv)
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


def anyres_vision_flops(cfg, num_tiles: int, batch: int = 1) -> int:
    """LLaVA-NeXT: :func:`vision_flops`' CLIP tower (class token included: S = N_p + 1 positions, the layers up to
    ``vision_feature_layer``) on each of ``num_tiles`` tiles (base tile + grid), and the projector over every tile's
    N_p patch features (it runs before the unpad crop; the newline vectors cost nothing) → ``num_tiles ×`` the
    per-tile cost, times ``batch``."""
    v = cfg.vision
    n_p, s = v.num_patches, v.num_positions
    layers_run = max(layer % (v.num_hidden_layers + 1) for layer in cfg.vision_feature_layer)
    patch = 2 * n_p * v.num_channels * v.patch_size**2 * v.hidden_size
    per_layer = 2 * s * (4 * v.hidden_size**2 + 2 * v.hidden_size * v.intermediate_size) + 4 * s * s * v.hidden_size
    d = cfg.text.hidden_size
    proj = 2 * n_p * (v.hidden_size * len(cfg.vision_feature_layer) * d + d * d)
    return batch * num_tiles * (patch + layers_run * per_layer + proj)


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
