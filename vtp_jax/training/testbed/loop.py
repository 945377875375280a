"""The testbed training run (:func:`train`): files, model, vision stage, language stage with validation, export,
conversion, test evaluation and the record.

The HF → vtp_jax conversion is a function the caller passes (``converter``): this module never imports the
``convert`` package (which is built on ``vtp_jax``); the CLI (:mod:`vtp_jax.training.testbed.cli`) passes
:func:`convert.convert`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

from vtp_jax.testbed import shapes
from vtp_jax.training.testbed.batches import Encoder
from vtp_jax.training.testbed.builders import make_hf_config, testbed_builder, write_processor_files
from vtp_jax.training.testbed.corpus import conversation_stream, shapes_image_size, train_shapes_tokenizer
from vtp_jax.training.testbed.evaluation import Evaluator, evaluate_converted
from vtp_jax.training.testbed.export import export_hf
from vtp_jax.training.testbed.losses import make_optimizer, make_train_step
from vtp_jax.training.testbed.recording import (
    is_testbed_output, per_kind_text, plot_curves, summary, update_record, write_json,
)
from vtp_jax.training.testbed.settings import (
    CORPUS_REPEATS, GENERATION, SIZES, SUBSET_N, TASK, TEST_SEED, VOCAB_SIZE, TrainError, TrainSettings,
)
from vtp_jax.training.testbed.vision import pretrain_vision

# (HF-format directory, output directory) → the converted directory (e.g. functools.partial(convert.convert,
# progress=False)); raises ValueError (or the converter's own error) for a checkpoint it cannot convert.
Converter = Callable[[str, str], str]


def build_model(cfg, seed: int):
    """A freshly initialised float32 model of ``cfg``'s family (``nnx.Rngs(seed)``)."""
    import jax.numpy as jnp
    from flax import nnx

    from vtp_jax.checkpoint import build_model_class

    return build_model_class(cfg)(cfg, dtype=jnp.float32, rngs=nnx.Rngs(seed))


def prepare_output(out_dir: str, settings: TrainSettings, *, force: bool) -> str:
    """Checks ``out_dir`` before any work (:func:`vtp_jax.paths.check_output_dir`) and, with ``force``, removes a
    previous output of this trainer there. Returns the absolute path.

    Raises:
      TrainError: ``--init`` equal to ``--out``; a non-empty ``out_dir`` without ``force``, or one that is not a
        vtp-train-testbed output (never removed).
      OutputPathError: an output path that cannot be created.
    """
    from vtp_jax.paths import check_output_dir

    out_dir = os.path.abspath(out_dir)
    if settings.init and os.path.abspath(settings.init) == out_dir:
        raise TrainError("--init and --out must differ (--out is replaced)")
    check_output_dir("--out", out_dir)
    if os.path.exists(out_dir) and os.listdir(out_dir):
        if not force:
            raise TrainError(f"{out_dir} exists and is not empty; pass --force to replace it")
        if not is_testbed_output(out_dir):
            raise TrainError(f"{out_dir} is not a vtp-train-testbed output (no config.json with \"vtp_testbed\"); "
                             "refusing to replace it even with --force")
        shutil.rmtree(out_dir)
    return out_dir


def train(settings: TrainSettings, out_dir: str, *, converter: Converter, force: bool = False,
          progress: bool = True) -> dict:
    """Trains, exports to ``out_dir``, converts (with ``converter``), evaluates and records. Returns the training
    log dict.

    Args:
      settings: the run's hyper-parameters.
      out_dir: the HF-format output directory (checked first, :func:`prepare_output`).
      converter: the HF → vtp_jax conversion (:data:`Converter`), used for ``settings.init`` and for the exported
        checkpoint that the test split is scored on.
      force: replace a previous output of this trainer in ``out_dir``.
      progress: progress bars on stderr.

    Raises:
      TrainError: bad settings or output directory, an ``--init`` checkpoint that does not fit.
    """
    import jax
    from flax import nnx
    from tqdm.auto import tqdm

    from vtp_jax.config import config_from_hf
    from vtp_jax.processing import load_processor

    family = settings.family
    testbed_builder(family)
    out_dir = prepare_output(out_dir, settings, force=force)
    t_start = time.time()
    hf_config = make_hf_config(family, settings.sizes)
    if settings.init:  # the init checkpoint's own tokenizer: a retrained one may differ if the corpus changed
        import transformers

        tokenizer = transformers.AutoTokenizer.from_pretrained(settings.init)
    else:
        tokenizer = train_shapes_tokenizer(family, {**SIZES[family], **settings.sizes}["vocab_size"])
    work = tempfile.mkdtemp(prefix="vtp_testbed_")
    try:
        write_processor_files(work, family, hf_config, tokenizer)
        with open(os.path.join(work, "config.json"), encoding="utf-8") as fh:
            cfg = config_from_hf(json.load(fh))
        processor = load_processor(work, cfg)
        encoder = Encoder(family, processor, cfg, settings.max_turns, settings.describe > 0)
        size = shapes_image_size(cfg)
        static = encoder.image_kwargs

        model = build_model(cfg, settings.seed)
        if settings.init:  # continue from an exported testbed (same sizes): its converted weights replace the init
            from vtp_jax.checkpoint import load

            try:
                loaded, init_cfg, _ = load(converter(settings.init, os.path.join(work, "init")))
            except ValueError as e:
                raise TrainError(f"--init {settings.init}: {e}") from None
            if init_cfg != cfg:
                raise TrainError(f"--init {settings.init}: its config differs from this run's (family / --sizes)")
            nnx.update(model, nnx.state(loaded, nnx.Param))
        stream = shapes.iter_split("train", settings.seed, size=size)
        t_vision = time.time()
        vision_losses, vision_accuracy = pretrain_vision(model, encoder, settings, stream, progress=progress) \
            if settings.vision_steps > 0 else ([], {})
        vision_seconds = time.time() - t_vision
        n_params = int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))
        # Stage 2 trains the projector and the language model; the vision tower stays frozen (LLaVA-1.5's recipe)
        # unless --train-vision.
        frozen_filter = nnx.Nothing() if settings.train_vision else nnx.PathContains("vision_tower")
        graphdef, frozen, params = nnx.split(model, frozen_filter, ...)

        def full_state(params):
            return nnx.split(nnx.merge(graphdef, frozen, params))[1]
        tx, schedule = make_optimizer(settings.lr, settings.steps, settings.warmup, settings.weight_decay,
                                      settings.clip)
        opt_state = tx.init(params)
        step_fn = make_train_step(family, graphdef, tx, cfg, static, settings.complementary, settings.full_mask)
        val_examples = shapes.make_split("val", settings.val_n, TEST_SEED, size=size)
        evaluator = Evaluator(model, processor, val_examples, batch=settings.eval_batch)

        log: dict[str, Any] = {
            "family": family, "task": TASK, "settings": dataclasses.asdict(settings),
            "sizes": {**SIZES[family], **settings.sizes}, "num_parameters": n_params,
            "num_visual_tokens": encoder.num_visual_tokens, "seq_len": encoder.seq_len,
            "loss_steps": [], "losses": [], "grad_norms": [], "val": [],
        }
        print(f"[{family}] {n_params / 1e6:.2f}M parameters, {encoder.num_visual_tokens} visual tokens, "
              f"training length {encoder.seq_len}, {settings.steps} steps × {settings.batch}", file=sys.stderr)

        log["vision_pretraining"] = {"steps": settings.vision_steps, "seconds": vision_seconds,
                                     "val_patch_accuracy": vision_accuracy, "losses": vision_losses}
        rng = np.random.default_rng([settings.seed, 7])
        key = jax.random.key(settings.seed)

        # complementary masking: half as many conversations, each twice in the step (same rows, same compute)
        rows_per_step = settings.batch // 2 if settings.complementary else settings.batch
        conversations = conversation_stream(stream, rng, max_turns=settings.max_turns, describe=settings.describe,
                                            kinds=settings.kinds, kind_weights=settings.kind_weights)

        def next_batch():
            return encoder.batch([next(conversations) for _ in range(rows_per_step)], rng)

        pending: list = []
        t_train = time.time()
        batch = next_batch()
        bar = tqdm(range(settings.steps), desc=f"train {family}", disable=not progress, dynamic_ncols=True)
        for step in bar:
            key, sub = jax.random.split(key)
            params, opt_state, loss, gnorm = step_fn(params, frozen, opt_state, batch, sub)
            pending.append((step, loss, gnorm))
            if step + 1 < settings.steps:
                batch = next_batch()  # built on the host while the step runs
            last = step + 1 == settings.steps
            if len(pending) >= 10 or last:
                for s, l, g in pending:
                    log["loss_steps"].append(s)
                    log["losses"].append(float(l))
                    log["grad_norms"].append(float(g))
                pending = []
                bar.set_postfix(loss=f"{np.mean(log['losses'][-50:]):.4f}", lr=f"{float(schedule(step)):.2e}")
            if (step + 1) % settings.eval_every == 0 or last:
                result = evaluator(full_state(params))
                log["val"].append({"step": step + 1, **summary(result)})
                tqdm.write(f"[{family}] step {step + 1}: val accuracy {result['accuracy']:.3f} "
                           f"({per_kind_text(result)})",
                           file=sys.stderr)
        bar.close()
        log["train_seconds"] = time.time() - t_train + vision_seconds  # both stages

        # ---- export, convert, evaluate on the test split, record ----
        record = {
            "task": TASK, "family": family, "image_size": size, "num_visual_tokens": encoder.num_visual_tokens,
            "train_steps": settings.steps, "vision_pretrain_steps": settings.vision_steps, "batch": settings.batch,
            "train_examples": settings.steps * rows_per_step + settings.vision_steps * settings.batch,
            "describe_fraction": settings.describe, "max_turns": settings.max_turns,
            "vision_tower_trained_in_stage_2": settings.train_vision,
            "complementary_masking": settings.complementary,
            "question_kinds": list(settings.kinds) if settings.kinds else list(shapes.KINDS),
            "first_question_kind_weights": settings.kind_weights,
            "full_mask_fraction": settings.full_mask,
            "seed": settings.seed, "generation": GENERATION[family], "init": settings.init,
            "val": {"n": settings.val_n, "seed": TEST_SEED, "accuracy": log["val"][-1]["accuracy"]},
            "tokenizer": f"train_tokenizer({VOCAB_SIZE}) on the built-in corpus + shapes.corpus() x{CORPUS_REPEATS}",
            "generator": "vtp_jax.training.testbed (vtp-train-testbed)",
        }
        final = nnx.merge(graphdef, frozen, params)
        export_hf(out_dir, family, hf_config, nnx.to_pure_dict(nnx.state(final, nnx.Param)), tokenizer, record)
        converted = converter(out_dir, os.path.join(work, "converted"))
        test = evaluate_converted(converted, settings.test_n, batch=settings.eval_batch)
        subset = evaluate_converted(converted, SUBSET_N)
        record = update_record(out_dir, {
            "test": {"n": settings.test_n, "seed": TEST_SEED, "accuracy": test["accuracy"],
                     "per_kind": {k: v["accuracy"] for k, v in test["per_kind"].items()}},
            "test_subset": {"n": SUBSET_N, "seed": TEST_SEED, "batch": SUBSET_N, "accuracy": subset["accuracy"],
                            "correct": subset["correct"], "predictions": subset["predictions"]},
        })
        log["test"] = summary(test)
        log["test_subset"] = summary(subset)
        log["record"] = record
        log["total_seconds"] = time.time() - t_start
        log["checkpoint_bytes"] = os.path.getsize(os.path.join(out_dir, "model.safetensors"))
        log["checkpoint_dir_bytes"] = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
        write_json(os.path.join(out_dir, "training_log.json"), log)
        plot_curves(os.path.join(out_dir, "loss_curve.png"), log)
        print(f"[{family}] test accuracy {test['accuracy']:.3f} on {test['n']} ({subset['correct']}/{SUBSET_N} on the "
              f"fixed subset); trained {log['train_seconds'] / 60:.1f} min; wrote {out_dir}", file=sys.stderr)
        return log
    finally:
        shutil.rmtree(work, ignore_errors=True)
