"""The testbed's objectives and optimiser: next-token cross-entropy (autoregressive), LLaDA's masked-diffusion loss
with its masking process (masked diffusion), AdamW with warm-up and cosine decay, and the jitted training step.

The loss of a family is chosen by its generator kind (``Family.kind``) in :data:`LOSSES`.
"""

from __future__ import annotations

from vtp_jax import families
from vtp_jax.training.testbed.settings import MASK_EPS


def make_optimizer(lr: float, steps: int, warmup: int, weight_decay: float, clip: float):
    """AdamW (β = 0.9, 0.98; weight decay on ≥ 2-D parameters) with linear warm-up and cosine decay to 5 %, after
    global-norm clipping. Returns (optax transformation, learning-rate schedule)."""
    import jax
    import optax

    schedule = optax.warmup_cosine_decay_schedule(
        0.0, lr, min(warmup, max(steps - 1, 1)), max(steps, 2), end_value=lr * 0.05,
    )
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    tx = optax.chain(
        optax.clip_by_global_norm(clip),
        optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=weight_decay, mask=decay_mask),
    )
    return tx, schedule


def diffusion_noise(key, ids, response, mask_id: int, *, complementary: bool = False, full_mask: float = 0.0):
    """LLaDA's forward (masking) process on the response tokens, with stratified noise levels.

    Args:
      key: a JAX PRNG key.
      ids: int32 [B, T] clean token ids.
      response: int/bool [B, T], 1 on the response tokens (the only ones ever masked).
      mask_id: the ``[MASK]`` token id.
      complementary: LaViDa's complementary masking (Li et al. 2025, arXiv 2505.16839). ``B`` must be even and row
        ``i + B/2`` must be a copy of row ``i``; the first half is masked as usual, the second half with exactly
        the complement (the response tokens the first half left clean), so every response token is a target in
        exactly one of the two copies.
      full_mask: the fraction F of the rows (the last ``round(F · B)``; a static count) whose whole response is
        masked, ``t = 1`` — the input of the first denoising step, from which greedy low-confidence decoding of a
        short answer takes its first tokens. The other rows are masked as usual. This mixes a point mass at
        ``t = 1`` into LLaDA's ``t ~ U(0, 1)``: the loss is still a ``1/p``-weighted masked-diffusion loss, but
        under a noise distribution that puts more weight on fully masked responses than LLaDA's ELBO does.

    Returns:
      (noisy int32 [B, T] — ``ids`` with the masked tokens replaced by ``mask_id`` —, masked bool [B, T],
      p float32 [B] — each row's masking probability: ``(1 − ε) t + ε`` with ε = :data:`MASK_EPS`; with
      ``complementary``, ``(1 − 2ε) t + ε`` for the first half and one minus that for the copies, so both stay
      in [ε, 1 − ε]; 1 on the ``full_mask`` rows).

    ``t`` is stratified over the (first half of the) batch: ``t_i = (u + i / B) mod 1`` with one ``u ~ U(0, 1)``,
    so every ``t_i`` is marginally ``U(0, 1)`` (LLaDA, Nie et al. 2025, §2.2–2.3) while the batch covers [0, 1)
    evenly — the low-discrepancy sampler of VDM (Kingma et al. 2021), also used by MDLM. Each row's token mask is
    unbiased for its ``p`` (``E[1{masked}] = p``), so :func:`diffusion_loss` stays unbiased either way.

    Raises:
      ValueError: ``complementary`` with an odd batch; ``full_mask`` outside [0, 1] or combined with
        ``complementary`` (the complement of a fully masked response masks nothing).
    """
    import jax
    import jax.numpy as jnp

    k_t, k_m = jax.random.split(key)
    response = response.astype(bool)
    b = ids.shape[0]
    if complementary and b % 2:
        raise ValueError(f"complementary masking needs an even batch (a copy of every row), got {b} rows")
    if not 0.0 <= full_mask <= 1.0:
        raise ValueError(f"full_mask is a fraction of the batch in [0, 1], got {full_mask}")
    if complementary and full_mask:
        raise ValueError("full_mask cannot be combined with complementary masking (the complement of a fully "
                         "masked response masks nothing)")
    n = b // 2 if complementary else b  # the rows masked (all, or the first half)
    n_full = int(round(full_mask * n))  # of which the last n_full have t = 1
    m = n - n_full  # the rows with t ~ U(0, 1), stratified
    t = (jax.random.uniform(k_t, ()) + jnp.arange(m) / max(m, 1)) % 1.0
    p = (1.0 - (2 if complementary else 1) * MASK_EPS) * t + MASK_EPS
    masked = (jax.random.uniform(k_m, (m, ids.shape[1])) < p[:, None]) & response[:m]
    if n_full:  # t = 1: every response token masked, p = 1 (weight 1)
        masked = jnp.concatenate([masked, response[m:n]])
        p = jnp.concatenate([p, jnp.ones((n_full,), p.dtype)])
    if complementary:  # the copies: exactly the response tokens the first half left clean
        masked = jnp.concatenate([masked, ~masked & response[n:]])
        p = jnp.concatenate([p, 1.0 - p])
    return jnp.where(masked, mask_id, ids), masked, p


def diffusion_loss(logits, ids, masked, p, response):
    """LLaDA's SFT loss (Nie et al. 2025, §2.3): cross-entropy on the masked response tokens weighted ``1/p``,
    divided by each row's response length, averaged over the batch.

    Args:
      logits: float32 [B, T, V]; ids: int32 [B, T] clean ids; masked: bool [B, T]; p: float32 [B];
      response: int/bool [B, T] (1 on the response tokens).

    Returns a float32 scalar (nats per response token). Its expectation over the masking equals the mean
    cross-entropy per response token of the model's predictions at those noise levels (``E[1{masked}/p] = 1``).
    """
    import jax.numpy as jnp
    import optax

    ce = optax.softmax_cross_entropy_with_integer_labels(logits, ids)
    length = jnp.maximum(jnp.sum(response.astype(bool), axis=1, keepdims=True), 1).astype(jnp.float32)
    return jnp.sum(jnp.where(masked, ce / p[:, None] / length, 0.0)) / ids.shape[0]


def next_token_loss(model, batch, key, *, mask_id=None, static=None, complementary=False, full_mask=0.0):
    """Autoregressive: next-token cross-entropy on the rows' target tokens (``batch["loss_mask"]``, the assistant
    continuations), averaged over those tokens. ``key`` and the masking options are unused (the trainer's CLI
    refuses the masking options for autoregressive families)."""
    import jax.numpy as jnp
    import optax

    ids, attn = batch["input_ids"], batch["attention_mask"]
    logits = model(ids, batch["pixel_values"], attn)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:])
    m = batch["loss_mask"][:, 1:].astype(jnp.float32)
    return jnp.sum(ce * m) / jnp.maximum(jnp.sum(m), 1.0)


def masked_diffusion_loss(model, batch, key, *, mask_id, static=None, complementary=False, full_mask=0.0):
    """Masked diffusion: the responses (``batch["response"]``) masked by :func:`diffusion_noise` (``complementary``,
    ``full_mask`` as there), the model run on the noisy ids with the static image arguments ``static``, scored by
    :func:`diffusion_loss`."""
    ids, attn = batch["input_ids"], batch["attention_mask"]
    noisy, masked, p = diffusion_noise(key, ids, batch["response"], mask_id, complementary=complementary,
                                       full_mask=full_mask)
    logits = model(noisy, batch["pixel_values"], attn, **(static or {}))
    return diffusion_loss(logits, ids, masked, p, batch["response"])


# (model, batch, key, *, mask_id, static, complementary, full_mask) → scalar loss, per generator kind
LOSSES = {families.AUTOREGRESSIVE: next_token_loss, families.MASKED_DIFFUSION: masked_diffusion_loss}


def make_train_step(family: str, graphdef, tx, cfg, static: dict, complementary: bool = False,
                    full_mask: float = 0.0):
    """The jitted step ``(params, frozen, opt_state, batch, key) → (params, opt_state, loss, grad_norm)``: the model
    is ``nnx.merge(graphdef, frozen, params)``, gradients are taken for ``params`` only (params and optimizer state
    donated); the loss is :data:`LOSSES` of the family's kind. ``complementary`` (masked diffusion only): the batch's
    rows are duplicated inside the step and the copies masked with the complement (:func:`diffusion_noise`), so the
    step runs on twice the rows it is given. ``full_mask`` (masked diffusion only): the fraction of rows whose whole
    response is masked (:func:`diffusion_noise`)."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    loss = LOSSES[families.get(family).kind]
    mask_id = getattr(cfg, "mask_token_id", None)

    def loss_fn(params, frozen, batch, key):
        model = nnx.merge(graphdef, frozen, params)
        if complementary:  # every row twice: [batch; batch], the copies masked with the complement
            batch = {k: jnp.concatenate([v, v]) for k, v in batch.items()}
        return loss(model, batch, key, mask_id=mask_id, static=static, complementary=complementary,
                    full_mask=full_mask)

    def step(params, frozen, opt_state, batch, key):
        loss_value, grads = jax.value_and_grad(loss_fn)(params, frozen, batch, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss_value, optax.global_norm(grads)

    return jax.jit(step, donate_argnums=(0, 2))
