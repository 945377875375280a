"""Visual-token order ablation: does a trained testbed read *where* things are from its visual tokens' features or
from their order in the sequence?

    python -m vtp_jax.training.order_ablation --model CONVERTED_DIR [--n 64] [--json OUT]

The visual tokens (projector outputs, one per patch / newline) are permuted before they are merged into the
sequence: each token keeps its features but takes another token's sequence position (and so its RoPE angle and, in
a causal decoder, what it may attend to). The accuracy of the **first answer token** is then compared per question
kind for three orders: the identity, a fixed random permutation (seed 0) and the reversed order.

* LLaVA: one prefill on the prompt, the next-token prediction at its last position.
* LLaDA-V: one forward on the prompt followed by ``gen_length`` ``[MASK]`` tokens (the first denoising step's input),
  the prediction at the first masked position.

A model that locates objects through their features is unaffected; one that uses the token order falls to the rate
of "name a shape that is in the scene" on location questions. The CLI also prints how much of the visual features'
variance the token index explains (:func:`index_variance_share`): how much position the features carry. This is a
diagnostic of the testbeds (measured numbers
in the README); it is not a pruning method and the models are our tiny testbeds, not real VLMs.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from vtp_jax.testbed import shapes
from vtp_jax.training.testbed import TEST_SEED, Encoder, shapes_image_size

ORDERS = ("identity", "random", "reversed")


def permutation(name: str, n: int, seed: int = 0) -> np.ndarray:
    """int [n]: the visual-token order called ``name`` (one of :data:`ORDERS`). Raises ValueError for another name."""
    if name == "identity":
        return np.arange(n)
    if name == "random":
        return np.random.default_rng(seed).permutation(n)
    if name == "reversed":
        return np.arange(n)[::-1].copy()
    raise ValueError(f"unknown order {name!r} (one of {ORDERS})")


def build_inputs(cfg, encoder: Encoder, examples, *, gen_length: int = 8):
    """The batch the ablation runs: (input_ids int32 [N, T] left-padded, valid bool [N, T], read_at int [N] — the
    position whose logits predict the first answer token —, targets int [N] — that token's reference id)."""
    from vtp_jax import families

    diffusion = families.get(cfg.family).kind == families.MASKED_DIFFUSION
    rows, targets, prompt_lengths = [], [], []
    for e in examples:
        ids = list(encoder.prompt_ids(e.question))
        prompt_lengths.append(len(ids))
        if diffusion:  # the answer is read at its first masked position
            ids += [encoder.mask_id] * gen_length
        rows.append(ids)
        targets.append(encoder.continuation_ids(e.question, e.answer)[0])
    t = max(len(r) for r in rows)
    ids = np.zeros((len(rows), t), np.int32)
    valid = np.zeros((len(rows), t), bool)
    read_at = np.zeros(len(rows), np.int64)
    for i, r in enumerate(rows):
        ids[i, t - len(r):] = r
        valid[i, t - len(r):] = True
        read_at[i] = t - len(r) + prompt_lengths[i] - (0 if diffusion else 1)  # autoregressive: the last prompt token
    return ids, valid, read_at, np.asarray(targets)


def visual_tokens(model, encoder: Encoder, examples):
    """The model's visual tokens for the examples' images, float32 [N, N_v, D_text] (projector outputs; LLaDA-V:
    base tile, then the 1 × 1 grid tile with its newlines)."""
    import jax.numpy as jnp

    pixels = jnp.asarray(encoder.pixels([e.image for e in examples]))
    return model.image_features(pixels, **encoder.image_kwargs)


def first_token_logits(model, cfg, encoder: Encoder, examples, orders, *, gen_length: int = 8):
    """Logits of the first answer token with the visual tokens in each of ``orders``: (float32 [n_orders, N, V],
    reference ids int [N]). The vision tower runs once; only the decoder runs per order.

    Args:
      model, cfg: a loaded model (:func:`vtp_jax.checkpoint.load`) of family "llava" or "llada_v".
      encoder: :class:`~vtp_jax.training.testbed.Encoder` of the same checkpoint (prompt ids, pixels, answer ids).
      examples: shapes examples (one batch; every image the model's input size).
      orders: permutations of the visual tokens, each int [N_v]: visual slot ``i`` of the sequence gets the
        features of visual token ``order[i]``.
      gen_length: LLaDA-V only, the number of ``[MASK]`` tokens after the prompt.

    Raises ValueError if an order is not a permutation of ``range(N_v)``.
    """
    import jax.numpy as jnp

    n_v = encoder.num_visual_tokens
    orders = [np.asarray(o) for o in orders]
    for order in orders:
        if order.shape != (n_v,) or not np.array_equal(np.sort(order), np.arange(n_v)):
            raise ValueError(f"order must be a permutation of range({n_v}), got shape {order.shape}")
    ids, valid, read_at, targets = build_inputs(cfg, encoder, examples, gen_length=gen_length)
    visual = visual_tokens(model, encoder, examples)
    ids, valid = jnp.asarray(ids), jnp.asarray(valid)
    rows = np.arange(len(ids))
    out = [np.asarray(model.forward_visual(ids, visual[:, order], valid))[rows, read_at] for order in orders]
    return np.stack(out), targets


def first_token_correct(model, cfg, encoder: Encoder, examples, orders, *, gen_length: int = 8) -> np.ndarray:
    """bool [n_orders, N]: whether the greedy first answer token (:func:`first_token_logits`) is the reference's."""
    logits, targets = first_token_logits(model, cfg, encoder, examples, orders, gen_length=gen_length)
    return logits.argmax(-1) == targets


def index_variance_share(features: np.ndarray) -> float:
    """Share of the variance of visual features float [N images, T tokens, D] explained by the token index: the
    between-index sum of squares over the total, ``N · Σ_t ‖x̄_t − x̄‖² / Σ_{n,t} ‖x_{n,t} − x̄‖²`` (x̄_t: the mean
    over images at index t, x̄: the grand mean). 1 when a token's features depend only on where it is, 0 when they
    do not depend on it at all. Raises ValueError for a non-3-D array or constant features."""
    x = np.asarray(features, np.float64)
    if x.ndim != 3:
        raise ValueError(f"features must be [N, T, D], got shape {x.shape}")
    grand = x.mean(axis=(0, 1))
    total = ((x - grand) ** 2).sum()
    if total == 0:
        raise ValueError("features are constant")
    between = ((x.mean(axis=0) - grand) ** 2).sum() * x.shape[0]
    return float(between / total)


def visual_features(model, cfg, encoder: Encoder, examples) -> np.ndarray:
    """Projector outputs of one tile per image, float32 [N, T, D_text]: LLaVA's N_v tokens; LLaDA-V's base tile
    (the first p² visual tokens — the 1 × 1 grid tile holds the same features, then newlines)."""
    visual = np.asarray(visual_tokens(model, encoder, examples), np.float32)
    if not hasattr(cfg, "tokens_per_tile"):  # one fixed-size image, no anyres tiles
        return visual
    return visual[:, : (cfg.vision.image_size // cfg.vision.patch_size) ** 2]


def ablate(model_dir: str, n: int = 64, *, batch: int = 32) -> dict:
    """{kind: {order: first-token accuracy}} on the first ``n`` validation questions of each kind (seed
    ``TEST_SEED``), plus ``"n"``: {kind: count} and ``"index_variance_share"`` (:func:`index_variance_share` of the
    projector outputs on 128 validation images). ``model_dir``: a converted testbed (``vtp-convert`` output)."""
    from vtp_jax.checkpoint import load
    from vtp_jax.processing import load_processor

    model, cfg, _ = load(model_dir)
    encoder = Encoder(cfg.family, load_processor(model_dir, cfg), cfg)
    size = shapes_image_size(cfg)
    by_kind = {k: [] for k in shapes.KINDS}
    for e in shapes.iter_split("val", TEST_SEED, size=size):
        if len(by_kind[e.kind]) < n:
            by_kind[e.kind].append(e)
        if all(len(v) == n for v in by_kind.values()):
            break
    result = {"n": {k: len(v) for k, v in by_kind.items()}}
    images = shapes.make_split("val", 128, TEST_SEED, size=size)
    result["index_variance_share"] = index_variance_share(visual_features(model, cfg, encoder, images))
    orders = [permutation(name, encoder.num_visual_tokens) for name in ORDERS]
    for kind, exs in by_kind.items():
        ok = np.concatenate([first_token_correct(model, cfg, encoder, exs[i:i + batch], orders)
                             for i in range(0, len(exs), batch)], axis=1)  # [n_orders, n]
        result[kind] = {name: float(ok[j].mean()) for j, name in enumerate(ORDERS)}
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vtp_jax.training.order_ablation", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="converted testbed directory (vtp-convert output)")
    p.add_argument("--n", type=int, default=64, help="validation questions per kind")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("--n must be ≥ 1")
    from vtp_jax.checkpoint import CheckpointError
    from vtp_jax.config import ConfigError
    from vtp_jax.processing import InputError

    try:
        result = ablate(args.model, args.n)
    except (CheckpointError, ConfigError, InputError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"first-answer-token accuracy by visual-token order ({args.model}; tiny testbed, not a real VLM)")
    print(f"{'kind':10s} {'n':>4s} " + " ".join(f"{o:>9s}" for o in ORDERS))
    for kind in shapes.KINDS:
        print(f"{kind:10s} {result['n'][kind]:4d} " + " ".join(f"{result[kind][o]:9.3f}" for o in ORDERS))
    print(f"share of the visual features' variance explained by the token index: {result['index_variance_share']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
