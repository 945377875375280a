"""``vtp-train-dyrate``: trains DyRate's rate predictor (:mod:`vtp_jax.pruning.dyrate`) for a converted LLaVA
checkpoint, with optax.

(The predictor itself, :class:`~vtp_jax.pruning.dyrate.RatePredictor`, lives with the pruning method; this trainer
sits above it and uses our generator, :mod:`vtp_jax.runtime` and the shapes task — which pruning must not import.)
DyRate is a decode-stage method: the checkpoint's family (``vtp_jax.families``) must be autoregressive and list the
``"decode"`` stage.

Data (the model's own behaviour; no labels needed):
  1. prompts from the synthetic shapes task's **training** split (:mod:`vtp_jax.testbed.shapes`; a share
     ``--describe`` asks for the scene description, a multi-token answer — the rest its one-word questions);
  2. the unpruned model's greedy response to each (our generator, up to ``--max-new-tokens``);
  3. one teacher-forced pass over prompt + response: at the probe layer ℓ, for every decision point j (the query
     row that generates response token j — the last prompt row for j = 0), the predictor's features
     (:func:`dyrate.features`: per-head attention shares of system / image / instruction / response) and the
     head-averaged attention each visual token receives (the drop ranking);
  4. for every rate r_k, one more teacher-forced pass in which each response row T + j sees only the
     ``keep_counts[k]`` visual tokens ranked best at decision j (every other key as usual). The **cost** of choosing
     rate k at decision j is KL(p_full ‖ p_k) of the next-token distribution at row T + j (nats).

  Approximation (documented choice; the paper gives no training details): in pass 4 every response row is pruned
  at the same rate with its own ranking, so the history a row sees was pruned too — at inference the history was
  pruned by the (lower, monotone) rates of earlier decisions. The label therefore slightly over-states the cost
  of a rate, which errs on the side of fidelity.

Objective (Gumbel-softmax over the K rates, temperature ``--tau``):
  ``L = E_g[ Σ_k y_k(g) · (cost_k + λ · kept_k) ]``, y = softmax((logits + g) / τ), kept_k = keep_counts[k] / N_v —
  fidelity of the pruned output traded against the visual tokens kept, ``λ`` = ``--lam`` (nats per unit of kept
  fraction). AdamW on the linear predictor (:class:`dyrate.RatePredictor`), full batch. At inference the argmax is
  taken (and made monotone by the generator).

The output file (safetensors, ``dyrate_predictor.safetensors`` by default inside ``--model``) records the probe layer,
K, λ and held-out statistics: mean predicted rate, mean cost, and the cost/kept of every constant rate for
comparison. Bad input → exit 2 with a message.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

from vtp_jax import families
from vtp_jax.pruning import dyrate as dy
from vtp_jax.pruning.core import visual_positions
from vtp_jax.testbed import shapes
from vtp_jax.training.testbed.corpus import shapes_image_size

DEFAULTS = dict(n=384, val_n=128, describe=0.5, max_new_tokens=32, rates=5, lam=1.0, steps=600, lr=0.05, tau=1.0,
                batch=32, seed=0)


class DyRateTrainError(ValueError):
    """Bad flags or a checkpoint this trainer cannot use."""


@dataclasses.dataclass
class Decisions:
    """Training data: features float32 [N, H·4], cost float32 [N, K] (nats), kept fraction per rate float32 [K]."""

    features: np.ndarray
    cost: np.ndarray
    kept: np.ndarray


def _prompts(n: int, split: str, describe: float, seed: int, size: int):
    """``n`` (image, prompt) pairs of the shapes ``split`` (seed ``seed``, ``size`` px images): each example's question,
    or with probability ``describe`` the description prompt."""
    rng = np.random.default_rng([seed, 11])
    out = []
    for i in range(n):
        ex = shapes.make_example(split, i, seed, size=size)
        out.append((ex.image, shapes.DESCRIBE if rng.random() < describe else ex.question))
    return out


class Collector:
    """Generates the unpruned responses and computes features and costs (see the module docstring)."""

    def __init__(self, model, cfg, processor, *, layer: int, num_rates: int, max_new_tokens: int):
        import jax
        from flax import nnx

        from vtp_jax.generation.autoregressive import AutoregressiveGenerator

        self.cfg, self.processor = cfg, processor
        self.layer, self.num_rates, self.max_new_tokens = layer, num_rates, max_new_tokens
        self.generator = AutoregressiveGenerator(model)
        self.graphdef, self.state = nnx.split(model)
        self.num_visual = getattr(cfg, "num_visual_tokens", None)  # None: read from the first batch (Qwen2.5-VL)
        self._pass = jax.jit(self._teacher_forced, static_argnames=("image_static",))

    def _teacher_forced(self, state, ids, key_valid, images, image_static=()):
        """ids int32 [B, T + R] (prompt left-padded to T, response right-padded to R), key_valid bool [B, T + R];
        images / image_static: the batch's image inputs split by
        :func:`vtp_jax.generation.autoregressive.split_image_inputs` (LLaVA: pixel_values float32 [B, 3, H, W];
        LLaVA-NeXT: the anyres dict). N_v is the length of the image features.
        Returns (features [B, R, H·4], cost [B, R, K]) — decision j at row T − 1 + j, its cost at row T + j."""
        import jax
        import jax.numpy as jnp
        from flax import nnx

        from vtp_jax.generation.autoregressive import _image_kwargs
        from vtp_jax.modeling.decoder import DecoderPlan, Probe, SequenceState

        model = nnx.merge(self.graphdef, state)
        r = self.max_new_tokens
        b, total = ids.shape
        t = total - r
        visual = model.image_features(**_image_kwargs(images, image_static))
        h, visual_mask = model.embed(ids, visual)
        # the model's positions (M-RoPE for Qwen2.5-VL): the response continues from the prompt as decode does
        positions = model.positions(key_valid, visual_mask, **_image_kwargs(images, image_static))
        seq = SequenceState(h, positions, key_valid)
        rows = jnp.broadcast_to(jnp.arange(t - 1, total - 1, dtype=jnp.int32), (b, r))
        lm = model.language_model
        full = lm(seq, DecoderPlan(probe=Probe(rows, (self.layer,))))
        probs = full.probe_heads  # [B, H, R, T + R]
        groups = dy.slot_groups(key_valid[:, :t], visual_mask[:, :t], r)  # the cache layout: prompt slots, then R
        feats = jax.vmap(dy.features, in_axes=(2, None), out_axes=1)(probs, groups)  # [B, R, H·4]
        n_v = visual.shape[1]
        counts = dy.keep_counts(n_v, self.num_rates)
        slots = visual_positions(visual_mask, n_v)  # [B, N_v]
        scores = jnp.take_along_axis(probs.mean(axis=1), slots[:, None, :], axis=2)  # [B, R, N_v]
        order = jnp.argsort(-scores, axis=2, stable=True)
        rank = jnp.argsort(order, axis=2)  # rank of each visual token at each decision
        logp_full = jax.nn.log_softmax(model.logits(full.h[:, t:]), axis=-1)  # rows T … T + R − 1
        costs = []
        for k in range(self.num_rates):
            kept = rank < counts[k]  # [B, R, N_v]: decision j's kept set, applied to row T + j
            # key mask per row: row T + j (j < R) loses the visual keys decision j does not keep
            drop = jnp.zeros((b, total, total), bool)
            rows_t = jnp.arange(t, total)
            drop = drop.at[jnp.arange(b)[:, None, None], rows_t[None, :, None], slots[:, None, :]].set(~kept)
            out = lm(seq, DecoderPlan(extra_mask=~drop[:, None]))
            logp_k = jax.nn.log_softmax(model.logits(out.h[:, t:]), axis=-1)
            kl = jnp.sum(jnp.exp(logp_full) * (logp_full - logp_k), axis=-1)  # [B, R]
            costs.append(kl)
        return feats, jnp.stack(costs, axis=-1)

    def collect(self, items, batch: int, *, progress: bool = True) -> Decisions:
        """Features and costs of every decision whose next response token exists."""
        from tqdm.auto import tqdm

        from vtp_jax.generation.autoregressive import split_image_inputs
        from vtp_jax.runtime import eos_token_ids

        eos = eos_token_ids(self.cfg, self.processor)
        pad = self.processor.pad_token_id
        feats, costs = [], []
        r = self.max_new_tokens
        for s in tqdm(range(0, len(items), batch), desc="dyrate data", disable=not progress, leave=False):
            chunk = items[s:s + batch]
            enc = self.processor([im for im, _ in chunk], [q for _, q in chunk])
            if self.num_visual is None:
                self.num_visual = int(enc.num_visual_tokens)
            if np.any(np.sum(enc.input_ids == self.cfg.image_token_id, axis=1) != self.num_visual):
                raise DyRateTrainError(f"the training images must all give {self.num_visual} visual tokens (one "
                                       "keep-count table); got another count")
            out = self.generator.generate_arrays(enc.input_ids, enc.attention_mask, enc.image_inputs,
                                          max_new_tokens=r, eos_token_ids=eos, pad_token_id=pad)
            resp = np.full((len(chunk), r), pad, np.int32)
            valid = np.zeros((len(chunk), r), bool)
            for i, n in enumerate(out.num_new_tokens):
                resp[i, :n] = out.tokens[i, :n]
                valid[i, :n] = True
            ids = np.concatenate([enc.input_ids, resp], axis=1).astype(np.int32)
            key_valid = np.concatenate([enc.attention_mask.astype(bool), valid], axis=1)
            images, image_static = split_image_inputs(enc.image_inputs)
            static_kw = {"image_static": image_static} if image_static else {}  # LLaVA: the call as before
            f, c = self._pass(self.state, ids, key_valid, images, **static_kw)
            f, c = np.asarray(f), np.asarray(c)
            for i in range(len(chunk)):
                n = int(valid[i].sum())
                # decisions j = 0 … n − 2: their next token (j + 1) exists and was generated by a decode step
                feats.append(f[i, : max(n - 1, 0)])
                costs.append(c[i, : max(n - 1, 0)])
        kept = (dy.keep_counts(self.num_visual, self.num_rates) / self.num_visual).astype(np.float32)
        return Decisions(np.concatenate(feats).astype(np.float32), np.concatenate(costs).astype(np.float32), kept)


def fit(data: Decisions, *, lam: float, steps: int, lr: float, tau: float, seed: int) -> tuple[np.ndarray, np.ndarray, list]:
    """Trains the linear predictor (Gumbel-softmax objective of the module docstring). Returns (weight [F, K],
    bias [K], losses)."""
    import jax
    import jax.numpy as jnp
    import optax

    x = jnp.asarray(data.features)
    target = jnp.asarray(data.cost + lam * data.kept[None])  # [N, K]
    f, k = x.shape[1], target.shape[1]
    params = {"w": jnp.zeros((f, k), jnp.float32), "b": jnp.zeros((k,), jnp.float32)}
    tx = optax.adamw(lr, weight_decay=1e-4)
    opt = tx.init(params)

    def loss_fn(p, key):
        logits = x @ p["w"] + p["b"]
        g = jax.random.gumbel(key, logits.shape)
        y = jax.nn.softmax((logits + g) / tau, axis=-1)
        return jnp.mean(jnp.sum(y * target, axis=-1))

    @jax.jit
    def step(p, opt, key):
        loss, grads = jax.value_and_grad(loss_fn)(p, key)
        updates, opt = tx.update(grads, opt, p)
        return optax.apply_updates(p, updates), opt, loss

    key = jax.random.key(seed)
    losses = []
    for _ in range(steps):
        key, sub = jax.random.split(key)
        params, opt, loss = step(params, opt, sub)
        losses.append(float(loss))
    return np.asarray(params["w"]), np.asarray(params["b"]), losses


def summarise(data: Decisions, weight: np.ndarray, bias: np.ndarray) -> dict:
    """Held-out statistics of the argmax choice (no monotone rule: decisions are independent here): mean rate index,
    mean kept fraction, mean cost (nats); and every constant rate's mean cost, for comparison."""
    choice = np.argmax(data.features @ weight + bias, axis=1)
    return {
        "decisions": int(len(choice)),
        "mean_rate_index": float(choice.mean()),
        "rate_histogram": np.bincount(choice, minlength=len(bias)).tolist(),
        "mean_kept_fraction": float(data.kept[choice].mean()),
        "mean_cost_nats": float(data.cost[np.arange(len(choice)), choice].mean()),
        "constant_rate_cost_nats": data.cost.mean(axis=0).tolist(),
    }


def supports_dyrate(family: str) -> bool:
    """Whether checkpoints of ``family`` can get a DyRate predictor: an autoregressive family whose generator runs the
    ``"decode"`` pruning stage (the collector uses the autoregressive generator and KV-cache layout)."""
    record = families.get(family)
    return record.kind == families.AUTOREGRESSIVE and dy.DyRate.stage in record.stages


def train(args: argparse.Namespace) -> dict:
    """Runs the whole pipeline and writes the predictor. Returns its ``meta`` record."""
    from vtp_jax.checkpoint import load
    from vtp_jax.processing import load_processor

    t0 = time.time()
    model, cfg, meta = load(args.model)
    if not supports_dyrate(cfg.family):
        names = ", ".join(name for name in families.families() if supports_dyrate(name))
        raise DyRateTrainError(f"DyRate is for autoregressive ({names}) checkpoints; {args.model} is {cfg.family}")
    layers = cfg.text.num_hidden_layers
    layer = args.layer if args.layer is not None else layers // 2
    if not 0 <= layer < layers:
        raise DyRateTrainError(f"--layer must be in [0, {layers - 1}], got {layer}")
    processor = load_processor(args.model, cfg)
    size = shapes_image_size(cfg)
    collector = Collector(model, cfg, processor, layer=layer, num_rates=args.rates, max_new_tokens=args.max_new_tokens)
    progress = not args.no_progress
    train_data = collector.collect(_prompts(args.n, "train", args.describe, args.seed, size), args.batch,
                                   progress=progress)
    val_data = collector.collect(_prompts(args.val_n, "val", args.describe, args.seed, size), args.batch,
                                 progress=progress)
    if len(train_data.cost) == 0:
        raise DyRateTrainError("no decode decisions collected: every response was a single token "
                               "(raise --describe or --max-new-tokens)")
    weight, bias, losses = fit(train_data, lam=args.lam, steps=args.steps, lr=args.lr, tau=args.tau, seed=args.seed)
    record = {
        "model": os.path.abspath(args.model), "random_weights": bool(meta.get("random_weights", False)),
        "layer": layer, "num_rates": args.rates, "rates": dy.rates(args.rates).tolist(),
        "keep_counts": dy.keep_counts(collector.num_visual, args.rates).tolist(), "num_visual_tokens":
            collector.num_visual, "lam": args.lam, "tau": args.tau,
        "steps": args.steps, "lr": args.lr, "train_prompts": args.n, "describe": args.describe,
        "max_new_tokens": args.max_new_tokens, "seed": args.seed,
        "train": summarise(train_data, weight, bias), "val": summarise(val_data, weight, bias),
        "final_loss": losses[-1], "seconds": time.time() - t0,
        "objective": "E_gumbel[sum_k y_k (KL_k + lam * kept_k)]",
    }
    out = args.out or os.path.join(args.model, dy.PREDICTOR_FILE)
    dy.RatePredictor(weight.astype(np.float32), bias.astype(np.float32), layer, record).save(out)
    print(json.dumps({"out": out, **{k: record[k] for k in ("layer", "lam", "train", "val", "seconds")}}, indent=1))
    return record


def _parser() -> argparse.ArgumentParser:
    """The ``vtp-train-dyrate`` argument parser."""
    from vtp_jax import argtypes

    d = DEFAULTS
    p = argparse.ArgumentParser(prog="vtp-train-dyrate", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="converted LLaVA checkpoint directory (vtp-convert output)")
    p.add_argument("--out", default=None, help=f"predictor file (default MODEL/{dy.PREDICTOR_FILE})")
    p.add_argument("--layer", type=argtypes.NON_NEGATIVE, default=None, help="probe layer ℓ, 0-based (default ⌊L/2⌋)")
    p.add_argument("--rates", type=int, default=d["rates"], help="K ≥ 2 discrete rates k/K (default 5; checked in main)")
    p.add_argument("--lam", type=argtypes.NON_NEGATIVE_REAL, default=d["lam"],
                   help="cost of keeping every visual token, in nats (≥ 0)")
    p.add_argument("--n", type=argtypes.POSITIVE, default=d["n"], help="training prompts (shapes train split)")
    p.add_argument("--val-n", type=argtypes.POSITIVE, default=d["val_n"], help="held-out prompts (val split)")
    p.add_argument("--describe", type=float, default=d["describe"],
                   help="share of description prompts, in [0, 1] (checked in main)")
    p.add_argument("--max-new-tokens", type=argtypes.integer(2), default=d["max_new_tokens"])
    p.add_argument("--steps", type=argtypes.POSITIVE, default=d["steps"])
    p.add_argument("--lr", type=argtypes.POSITIVE_REAL, default=d["lr"])
    p.add_argument("--tau", type=argtypes.POSITIVE_REAL, default=d["tau"], help="Gumbel-softmax temperature (> 0)")
    p.add_argument("--batch", type=argtypes.POSITIVE, default=d["batch"])
    p.add_argument("--seed", type=argtypes.SEED, default=d["seed"])
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    """``vtp-train-dyrate``: parses ``argv``, checks the flags and the output path, trains and writes the predictor.
    Returns the exit status: 0, or 2 with one ``vtp-train-dyrate: error: …`` line on stderr for bad input."""
    from vtp_jax.paths import check_output_file

    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        for flag in ("rates", "n", "val_n", "steps", "batch", "max_new_tokens"):
            if getattr(args, flag) < (2 if flag in ("rates", "max_new_tokens") else 1):
                raise DyRateTrainError(f"--{flag.replace('_', '-')} is too small: {getattr(args, flag)}")
        if not 0.0 <= args.describe <= 1.0:
            raise DyRateTrainError(f"--describe must be in [0, 1], got {args.describe}")
        if args.out:
            check_output_file("--out", args.out)
        elif os.path.isdir(args.model):  # the default, MODEL/dyrate_predictor.safetensors (a bad MODEL: load says so)
            check_output_file("--out (default)", os.path.join(args.model, dy.PREDICTOR_FILE))
        train(args)
    except ValueError as e:  # DyRateTrainError, CheckpointError, InputError, PruningError
        print(f"vtp-train-dyrate: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
