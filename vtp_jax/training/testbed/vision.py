"""Stage 1 of the testbed trainer: supervised pre-training of the vision tower on the shapes scenes
(:func:`pretrain_vision`; targets from :func:`cell_labels`)."""

from __future__ import annotations

import functools
import sys

import numpy as np

from vtp_jax.testbed import shapes
from vtp_jax.training.testbed.batches import Encoder
from vtp_jax.training.testbed.losses import make_optimizer
from vtp_jax.training.testbed.settings import TEST_SEED, TrainError, TrainSettings


def cell_labels(scenes) -> tuple[np.ndarray, np.ndarray]:
    """Targets of the vision pre-training stage: (shape, colour) int32 [B, 9] of the object in each 3 × 3-grid cell
    (row-major; 0 = empty cell, else 1 + index in SHAPES / COLOURS)."""
    shape = np.zeros((len(scenes), shapes.GRID**2), np.int32)
    colour = np.zeros_like(shape)
    for b, scene in enumerate(scenes):
        for o in scene.objects:
            c = o.cell[0] * shapes.GRID + o.cell[1]
            shape[b, c] = 1 + shapes.SHAPES.index(o.shape)
            colour[b, c] = 1 + shapes.COLOURS.index(o.colour)
    return shape, colour


def pretrain_vision(model, encoder: Encoder, settings: TrainSettings, stream, *, progress: bool = True):
    """Stage 1: supervised pre-training of the vision tower. LLaVA's tower comes pretrained (CLIP); ours starts from
    scratch, so it gets a short stage of its own on the same synthetic scenes.

    Temporary linear heads read the tower's features (the layer(s) the VLM uses): averaged over the patches of each
    3 × 3-grid cell, they predict the cell's shape and colour (or "empty"); per patch, the row and column of the
    patch's cell. Cross-entropy, AdamW. Averaging makes every patch of a cell carry the cell's content — what an
    attention read-out in the language model needs —, and the position targets keep the coarse location in the
    features themselves (the decoder's RoPE acts on queries and keys, not on the values it reads). The heads are
    discarded; the tower's parameters (shared with ``model``) are updated in place.

    Returns (losses, accuracy on 128 validation images: shape and colour of occupied cells, "empty" of empty ones).
    """
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx
    from tqdm.auto import tqdm

    from vtp_jax.modeling.layers import linear

    cfg = model.cfg
    vision = cfg.vision
    grid = vision.image_size // vision.patch_size
    if grid % shapes.GRID:
        raise TrainError(f"the {grid} × {grid} patch grid does not split into {shapes.GRID} × {shapes.GRID} cells")
    g = grid // shapes.GRID
    k = 1 + len(shapes.SHAPES)
    n_out = k + 1 + len(shapes.COLOURS)
    drop_cls = vision.kind == "clip"
    d_feat = vision.hidden_size * len(cfg.vision_feature_layer)
    # the grid row and column of every patch's cell: int32 [grid², 2]
    where = np.asarray([(i // g, j // g) for i in range(grid) for j in range(grid)], np.int32)

    class Probe(nnx.Module):
        def __init__(self, tower, rngs):
            self.tower = tower
            self.head = linear(d_feat, n_out, bias=True, dtype=jnp.float32, rngs=rngs)
            self.where = linear(d_feat, 2 * shapes.GRID, bias=True, dtype=jnp.float32, rngs=rngs)

        def __call__(self, pixels):
            feats = self.tower.features(pixels, cfg.vision_feature_layer)
            feats = feats[:, 1:] if drop_cls else feats
            b, d = feats.shape[0], feats.shape[-1]
            cells = feats.reshape(b, shapes.GRID, g, shapes.GRID, g, d).mean(axis=(2, 4)).reshape(b, -1, d)
            return self.head(cells), self.where(feats)

    probe = Probe(model.vision_tower, nnx.Rngs(settings.seed + 1))
    graphdef, params = nnx.split(probe)
    steps = settings.vision_steps
    tx, _ = make_optimizer(settings.lr, steps, min(settings.warmup, steps // 4), settings.weight_decay, settings.clip)
    opt_state = tx.init(params)

    def loss_fn(params, pixels, shape, colour):
        logits, pos = nnx.merge(graphdef, params)(pixels)
        ce_s = optax.softmax_cross_entropy_with_integer_labels(logits[..., :k], shape)
        ce_c = optax.softmax_cross_entropy_with_integer_labels(logits[..., k:], colour)
        row = jnp.broadcast_to(where[:, 0], pos.shape[:2])
        col = jnp.broadcast_to(where[:, 1], pos.shape[:2])
        ce_p = (optax.softmax_cross_entropy_with_integer_labels(pos[..., : shapes.GRID], row)
                + optax.softmax_cross_entropy_with_integer_labels(pos[..., shapes.GRID:], col))
        return jnp.mean(ce_s + ce_c) + jnp.mean(ce_p)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, pixels, shape, colour):
        loss, grads = jax.value_and_grad(loss_fn)(params, pixels, shape, colour)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def arrays(examples):
        pixels = encoder.pixels([e.image for e in examples])
        if pixels.ndim == 5:  # LLaDA-V: the base tile (the whole image)
            pixels = pixels[:, 0]
        return (pixels, *cell_labels([e.scene for e in examples]))

    losses, pending = [], []
    batch = arrays([next(stream) for _ in range(settings.batch)])
    bar = tqdm(range(steps), desc="stage 1: vision", disable=not progress, dynamic_ncols=True)
    for i in bar:
        params, opt_state, loss = step(params, opt_state, *batch)
        pending.append(loss)
        if i + 1 < steps:
            batch = arrays([next(stream) for _ in range(settings.batch)])
        if len(pending) >= 10 or i + 1 == steps:
            losses += [float(x) for x in pending]
            pending = []
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    bar.close()
    nnx.update(probe, params)

    pixels, shape, colour = arrays([shapes.make_example("val", i, TEST_SEED, size=vision.image_size)
                                    for i in range(128)])
    logits, pos = (np.asarray(a) for a in jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))(params, pixels))
    occupied = shape > 0
    pred_shape = np.argmax(logits[..., :k], -1)
    accuracy = {
        "shape": float(np.mean(pred_shape[occupied] == shape[occupied])),
        "colour": float(np.mean(np.argmax(logits[..., k:], -1)[occupied] == colour[occupied])),
        "empty": float(np.mean(pred_shape[~occupied] == 0)),
        "patch_row_col": float(np.mean((np.argmax(pos[..., : shapes.GRID], -1) == where[:, 0])
                                       & (np.argmax(pos[..., shapes.GRID:], -1) == where[:, 1]))),
    }
    print(f"[vision] cell accuracy on 128 val images: {accuracy}", file=sys.stderr)
    return losses, accuracy
