"""What every front end (``vtp-generate``, ``vtp-eval``) needs to run a converted checkpoint, in one place:
which pruning stages each family runs, the method built from keep / keep-ratio flags, stop ids, the LLaDA-V sampler
settings. All errors are ``ValueError`` subclasses with a message naming the problem (front ends exit 2).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from vtp_jax import argtypes
from vtp_jax.processing import InputError

# LLaDA-V: never predicted at masked positions (EOS, BOS, start/end header) / where the answer ends (EOS, EOT).
LLADA_SUPPRESS_TOKENS = ("<|endoftext|>", "<|startoftext|>", "<|start_header_id|>", "<|end_header_id|>")
LLADA_STOP_TOKENS = ("<|endoftext|>", "<|eot_id|>")
DEFAULT_KEEP_RATIO = 0.5  # FastV's R = 50% and RedVTP's keep ratio 0.5


def family_record(name: str):
    """The registered family ``name`` (:func:`vtp_jax.families.get`); raises InputError for an unknown one."""
    from vtp_jax import families

    try:
        return families.get(name)
    except families.UnknownFamilyError as e:
        raise InputError(str(e)) from None


def family_stages(family: str) -> tuple[str, ...]:
    """The pruning stages ``family``'s generator runs, in stage order (``Family.stages``). Raises InputError."""
    return family_record(family).stages


def default_keep_ratio(name: str) -> float:
    """The keep ratio a method uses when neither --keep nor --keep-ratio is given: its class's
    ``default_keep_ratio`` (ToDRE 0.1, DivPrune 0.098 — their papers' settings), else :data:`DEFAULT_KEEP_RATIO`."""
    from vtp_jax.pruning import METHODS

    return float(getattr(METHODS.get(name), "default_keep_ratio", DEFAULT_KEEP_RATIO))


def keep_ratio_used(spec: str, keep: int | None = None, keep_ratio: float | None = None) -> float | None:
    """The keep ratio the runs of ``spec`` (one method or ``a+b``) prune to — the one decision point for
    :func:`build_method` and the labels / records of vtp-eval. ``keep_ratio`` when given; None when ``keep`` (a
    count) is given or no method of ``spec`` takes a keep count (ToDRE stage 2, DyRate decide for themselves); else
    :func:`default_keep_ratio` of the method that takes the keep count."""
    from vtp_jax.pruning import METHODS

    parts = [n.strip() for n in spec.split("+")]
    keyed = [n for n in parts if n not in METHODS or METHODS[n].takes_keep]  # unknown names: refused later
    if keep is not None or not keyed or keyed == ["none"]:
        return None
    return keep_ratio if keep_ratio is not None else default_keep_ratio(keyed[0])


def check_method_family(name: str, family: str) -> None:
    """Raises InputError when the registered method ``name`` does not run on ``family``'s generator."""
    from vtp_jax.pruning import METHODS

    if name == "none" or name not in METHODS:  # unknown names: make_method lists the registered ones
        return
    stages = family_stages(family)
    if METHODS[name].stage not in stages:
        fitting = sorted(n for n, cls in METHODS.items() if cls.stage in stages)
        raise InputError(
            f"pruning method {name!r} (stage {METHODS[name].stage}) does not apply to {family} checkpoints; "
            f"methods for {family}: none{''.join(', ' + n for n in fitting)}"
        )


def build_method(
    name: str, family: str, num_visual: int, num_layers: int, *, keep: int | None = None,
    keep_ratio: float | None = None, **options: Any,
):
    """The validated method object (None for "none").

    ``keep`` or ``keep_ratio`` (default :func:`default_keep_ratio`: 0.5, ToDRE 0.1, DivPrune 0.098); LLaVA methods
    round ``N_v · ratio`` (FastV), LLaDA-V methods floor it (RedVTP's ``max(1, int(N_v · ratio))``). With a ratio,
    the method also carries it (``keep_ratio``, ``keep_rounding``), so that in a batch of different visual-token
    counts each row keeps its own share (``keep`` is then the count for ``num_visual``, the batch's largest). Raises
    InputError / PruningError.
    """
    from vtp_jax.pruning import make_method, resolve_keep

    if name == "none":
        if keep is not None or keep_ratio is not None:
            raise InputError("--keep / --keep-ratio need a pruning --method")
        return None
    check_method_family(name, family)
    from vtp_jax.pruning import METHODS

    if name in METHODS and not METHODS[name].takes_keep:  # all-or-nothing (ToDRE stage 2)
        if keep is not None or keep_ratio is not None:
            raise InputError(f"pruning method {name!r} takes no --keep / --keep-ratio")
        method = make_method(name, **options)
    else:
        ratio = keep_ratio_used(name, keep, keep_ratio)
        rounding = family_record(family).keep_rounding
        count = resolve_keep(num_visual, keep, ratio, rounding=rounding)
        # the ratio travels with the method: rows of one batch holding other visual-token counts keep their share
        method = make_method(name, keep=count, keep_ratio=ratio, keep_rounding=rounding, **options)
    method.validate(num_visual, num_layers)
    return method


def build_methods(
    spec: str, family: str, num_visual: int, num_layers: int, *, keep: int | None = None,
    keep_ratio: float | None = None, **options: Any,
):
    """``spec`` is one method name or several joined by ``+`` (at most one per stage, in stage order, e.g.
    ``todre+todre-relevance`` = ToDRE stages 1 and 2). One name: :func:`build_method`. Several: a tuple of methods;
    each gets the options its dataclass declares, ``--keep``/``--keep-ratio`` go to the one method that takes a keep
    count (given only when at most one does; otherwise every such method keeps its default ratio of the visual
    tokens that reach it), a later method is validated against the visual tokens the pre-LLM one keeps.
    Raises InputError / PruningError (unknown name, two methods of one stage, an option no method takes).
    """
    import dataclasses

    from vtp_jax.pruning import METHODS, make_method

    names = [n.strip() for n in spec.split("+")]
    if len(names) == 1:
        return build_method(spec, family, num_visual, num_layers, keep=keep, keep_ratio=keep_ratio, **options)
    if "none" in names or len(set(names)) != len(names):
        raise InputError(f"--method {spec!r}: combine distinct methods, none of them 'none'")
    for n in names:
        if n not in METHODS:
            make_method(n)  # raises PruningError listing the registered names
        check_method_family(n, family)
    stages = [METHODS[n].stage for n in names]
    order = family_stages(family)
    if len(set(stages)) != len(stages) or stages != sorted(stages, key=order.index):
        raise InputError(f"--method {spec!r}: give at most one method per stage, in stage order ({' + '.join(order)})")
    keyed = [n for n in names if METHODS[n].takes_keep]
    if len(keyed) > 1 and (keep is not None or keep_ratio is not None):  # without them each uses its default ratio
        raise InputError(f"--method {spec!r}: --keep / --keep-ratio would apply to several methods ({', '.join(keyed)}); "
                         "leave them out (each method then keeps its default ratio)")
    given = {k for k, v in options.items() if v is not None}
    used: set[str] = set()
    methods, n_v = [], num_visual
    for n in names:
        fields = {f.name for f in dataclasses.fields(METHODS[n])}
        own = {k: v for k, v in options.items() if k in fields}
        used |= given & fields
        kk = dict(keep=keep, keep_ratio=keep_ratio) if n in keyed else {}
        m = build_method(n, family, n_v, num_layers, **kk, **own)
        n_v = getattr(m, "keep", n_v) if m.stage == "pre_llm" else n_v
        methods.append(m)
    if given - used:
        raise InputError(f"--method {spec!r}: option(s) {', '.join(sorted(given - used))} apply to none of its methods")
    return tuple(methods)


def eos_token_ids(cfg, processor) -> tuple[int, ...]:
    """LLaVA stop ids: the text config's ``eos_token_id`` (int or list), else the tokenizer's EOS."""
    eos = processor.tokenizer.eos_token_id
    return tuple(cfg.text.eos_token_id) or ((int(eos),) if eos is not None else ())


def check_positions(cfg, prompt_tokens: int, new_tokens: int, what: str) -> None:
    """Raises InputError if ``prompt_tokens + new_tokens`` exceeds the model's positions."""
    limit = cfg.text.max_position_embeddings
    if prompt_tokens + new_tokens > limit:
        raise InputError(f"prompt ({prompt_tokens} tokens) plus {what} {new_tokens} exceeds the model's {limit} positions")


def diffusion_config(
    cfg, processor, *, gen_length: int, block_length: int | None, steps: int, remasking: str, cfg_scale: float,
    source: str = "the checkpoint", warn=None, early_stop: bool = True, cache: str = "none",
    threshold: float | None = None, pruned_cache: str | None = None,
):
    """LLaDA-V sampler settings: the checkpoint's mask id, suppressed ids (EOS, BOS, header tokens — LLaDA-V
    forbids them at masked positions) and stop ids (EOS, EOT) from the tokenizer. ``block_length`` None means one
    block of ``gen_length``; any given value, 0 included, is validated as it is. Raises InputError (no usable
    mask id) or DiffusionError (lengths < 1 or that do not divide, bad remasking, a cfg that is negative or not
    finite). ``early_stop``: the official stop rule (:class:`vtp_jax.generation.diffusion.DiffusionConfig`;
    ``--no-early-stop`` turns it off); ``cache``: approximate KV caching, "none" | "prefix" | "dual" (``--cache``);
    ``threshold``: parallel decoding, None or τ in (0, 1] (``--threshold``); ``pruned_cache``: "compact" (None) |
    "rebuild", the cache after RedVTP's compaction (``--pruned-cache``).
    ``warn`` (a ``str -> None`` callable, e.g. a front end's stderr printer) hears of legal but suspect
    settings: more denoising steps than generated tokens (the steps beyond one token per step unmask nothing and
    only cost time)."""
    from vtp_jax.generation.diffusion import DiffusionConfig

    mask_id = getattr(cfg, "mask_token_id", None)
    if mask_id is None or not 0 <= int(mask_id) < cfg.text.vocab_size:
        raise InputError(
            f"{source}: the checkpoint has no usable mask_token_id ({mask_id!r}); diffusion sampling needs the "
            "[MASK] token id — add \"mask_token_id\" to the HF config.json and convert again"
        )
    mask_id = int(mask_id)
    suppress = tuple(i for i in processor.token_ids(LLADA_SUPPRESS_TOKENS) if i < cfg.text.vocab_size and i != mask_id)
    stops = list(processor.token_ids(LLADA_STOP_TOKENS))
    eos = processor.tokenizer.eos_token_id
    if eos is not None and int(eos) not in stops:
        stops.append(int(eos))
    dcfg = DiffusionConfig(
        gen_length=gen_length, block_length=gen_length if block_length is None else block_length, steps=steps, remasking=remasking,
        cfg=cfg_scale, mask_id=mask_id, suppress_ids=suppress, stop_ids=tuple(i for i in stops if i != mask_id),
        early_stop=early_stop, cache=cache, threshold=threshold, pruned_cache=pruned_cache or "compact",
    )
    dcfg.validate()
    if warn is not None and dcfg.steps > dcfg.gen_length:
        warn(f"--steps {dcfg.steps} exceeds --gen-length {dcfg.gen_length}: every step unmasks at most the tokens "
             f"left, so {dcfg.steps - dcfg.gen_length} of the steps do nothing but cost time")
    return dcfg


def add_sampler_arguments(p) -> None:
    """The flags ``vtp-generate`` and ``vtp-eval`` share: position handling of kept tokens, and the sampler
    settings of each family (``None`` defaults are filled per family by :func:`family_flags`).

    Every number is range-checked by argparse (a usage error, exit 2, before anything runs): lengths and step
    counts whole numbers ≥ 1, ``--top-p`` in (0, 1], ``--temperature`` and ``--cfg`` finite and ≥ 0 — the rules of
    :mod:`vtp_jax.argtypes` that :func:`vtp_jax.generation.sampling.check_sampler_settings` applies to the Python
    API."""
    from vtp_jax import argtypes

    r = p.add_mutually_exclusive_group()
    r.add_argument("--reindex", dest="reindex", action="store_const", const=True, default=None,
                   help="renumber positions of kept tokens contiguously (RedVTP default)")
    r.add_argument("--original-positions", dest="reindex", action="store_const", const=False,
                   help="kept tokens keep their original positions (FastV default)")
    a = p.add_argument_group("autoregressive (llava)")
    a.add_argument("--max-new-tokens", type=argtypes.POSITIVE, default=None, help="default 32")
    a.add_argument("--top-p", type=argtypes.TOP_P, default=None, help="nucleus sampling, in (0, 1] (default 1.0)")
    d = p.add_argument_group("masked diffusion (llada_v)")
    d.add_argument("--gen-length", type=argtypes.POSITIVE, default=None, help="response length in tokens (default 32)")
    d.add_argument("--steps", type=argtypes.POSITIVE, default=None, help="denoising steps in all (default 16)")
    d.add_argument("--block-length", type=argtypes.POSITIVE, default=None,
                   help="semi-autoregressive block, ≥ 1, dividing --gen-length (default: the gen length)")
    d.add_argument("--remasking", default=None, choices=["low_confidence", "random"],
                   help="which predictions to keep at each step (default low_confidence)")
    d.add_argument("--cfg", type=argtypes.GUIDANCE, default=None,
                   help="classifier-free guidance scale, ≥ 0 (default 0 = off)")
    d.add_argument("--cache", choices=["none", "prefix", "dual"], default=None,
                   help="approximate KV caching (Fast-dLLM): prefix = cached keys before the current block, dual = "
                        "before and after it, refreshed at each block start (default none: exact)")
    d.add_argument("--threshold", type=argtypes.PROBABILITY, default=None,
                   help="parallel decoding (Fast-dLLM): unmask every masked position of the block whose confidence "
                        "is ≥ τ (at least the most confident one per step); a block runs until complete, so --steps "
                        "is unused (default: LLaDA's fixed schedule)")
    d.add_argument("--pruned-cache", choices=["compact", "rebuild"], default=None,
                   help="with --cache and redvtp / llada-fastv: compact = the pruned visual tokens leave the cache "
                        "(keys re-rotated to their new positions), rebuild = one full pass over the pruned sequence "
                        "caches it anew (default compact)")
    d.add_argument("--score-step", type=argtypes.NON_NEGATIVE, default=None, metavar="S",
                   help="redvtp / llada-fastv: the denoising step (0-based, over all blocks) whose attention scores "
                        "the visual tokens (default 0, the official)")
    d.add_argument("--prompt-format", choices=["official", "plain"], default=None,
                   help="official: LLaDA-V's conv_llava_llada system turn + tokenizer_image_token; plain: the user "
                        "turn alone (the testbeds here); default: the checkpoint's vtp_prompt_format, else official")
    d.add_argument("--no-early-stop", dest="early_stop", action="store_false",
                   help="fill every response slot (LLaDA's plain loop) instead of the official LLaDA-V stop rule "
                        "(nothing after an unmasked <|eot_id|> is unmasked; a finished row ends the loop)")
    p.add_argument("--temperature", type=argtypes.TEMPERATURE, default=0.0, help="≥ 0; 0 = greedy (default)")


def join_processes(args) -> bool:
    """``jax.distributed`` from ``--coordinator`` / ``--num-processes`` / ``--process-id`` (or the environment):
    :func:`vtp_jax.sharding.initialize_distributed`, before any device is touched. Returns whether several
    processes run. Raises DistributedError (a ValueError: exit 2)."""
    from vtp_jax.sharding import initialize_distributed

    return initialize_distributed(getattr(args, "coordinator", None), getattr(args, "num_processes", None),
                                  getattr(args, "process_id", None), getattr(args, "coordinator_timeout", 60))


def processor_options(args: argparse.Namespace) -> dict:
    """The family processor options given on the command line (``--min-pixels``, ``--max-pixels``), for
    :func:`vtp_jax.processing.load_processor` (which refuses them for a family that takes none)."""
    return {k: getattr(args, k, None) for k in ("min_pixels", "max_pixels")}


def add_input_arguments(p) -> None:
    """The input flags ``vtp-generate`` and ``vtp-eval`` share: ``--max-image-pixels N`` (a whole number ≥ 1; the
    pixel limit of :func:`vtp_jax.processing.load_image`, default PIL's 89,478,485), ``--mesh`` (a device mesh,
    :func:`vtp_jax.sharding.parse_mesh`) and the multi-process flags (:func:`join_processes`)."""
    from vtp_jax import argtypes

    p.add_argument("--mesh", default=None, metavar="data=D,fsdp=F,tensor=T",
                   help="shard the model over a device mesh (vtp_jax.sharding): the batch along data, the weights "
                        "along embed (fsdp) and heads / MLP / vocabulary (tensor); axes left out are 1 and the "
                        "product must equal the device count (CPU: XLA_FLAGS=--xla_force_host_platform_device_count=N)")
    m = p.add_argument_group("multi-process (jax.distributed; default: one process, or JAX_COORDINATOR_ADDRESS / "
                             "JAX_NUM_PROCESSES / JAX_PROCESS_ID)")
    m.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="process 0's address; every process runs the same command with its own --process-id")
    m.add_argument("--num-processes", type=argtypes.POSITIVE, default=None, metavar="N")
    m.add_argument("--process-id", type=argtypes.NON_NEGATIVE, default=None, metavar="I")
    m.add_argument("--coordinator-timeout", type=argtypes.POSITIVE, default=60, metavar="S",
                   help="seconds to wait for the coordinator (default 60)")
    q = p.add_argument_group("dynamic resolution (qwen2_5_vl)")
    q.add_argument("--min-pixels", type=argtypes.POSITIVE, default=None, metavar="N",
                   help="resize the image to at least N pixels, height × width (default the checkpoint's image "
                        "processor: 3136 for Qwen2.5-VL)")
    q.add_argument("--max-pixels", type=argtypes.POSITIVE, default=None, metavar="N",
                   help="resize the image to at most N pixels, height × width (default the checkpoint's: 12845056 "
                        "for Qwen2.5-VL); fewer pixels, fewer visual tokens (one per 28 × 28)")
    p.add_argument("--max-image-pixels", type=argtypes.POSITIVE, default=None, metavar="N",
                   help="refuse image files of more than N pixels, width × height, from their header (a guard "
                        "against decompression bombs; default PIL's limit, 89478485 ≈ 9459×9459)")


def family_flags(args: argparse.Namespace, family: str) -> None:
    """Rejects sampler flags of the other generator kind; fills the defaults of this family's kind
    (:data:`vtp_jax.families.SAMPLER_DEFAULTS`). Raises InputError (also for an unknown family)."""
    from vtp_jax.families import SAMPLER_DEFAULTS

    fam = family_record(family)
    own = SAMPLER_DEFAULTS[fam.kind]
    other = {k: v for kind, d in SAMPLER_DEFAULTS.items() if kind != fam.kind for k, v in d.items()}
    given = ["--" + k.replace("_", "-") for k in other if getattr(args, k) is not None]
    if given:
        from vtp_jax import families

        def label(kind):  # "autoregressive (llava)", "diffusion (llada_v)"
            names = ", ".join(f.name for f in families.families().values() if f.kind == kind)
            return f"{kind.split('_')[-1]} ({names})"

        kinds = " / ".join(label(k) for k in SAMPLER_DEFAULTS if k != fam.kind)
        raise InputError(f"{', '.join(given)} only apply to {kinds} checkpoints; this checkpoint's family is {family}")
    for k, v in own.items():
        if getattr(args, k) is None:
            setattr(args, k, v)


MEMORY_HINT = "--skip-memory-check to try anyway"


def memory_budget(args, cfg, dtype: str, *, batch_size: int, seq_len: int, logit_rows: int, vision_images: int,
                  vision_tokens: int | None = None):
    """Estimates the memory of ``cfg`` in ``dtype`` for these lengths and, unless ``args.skip_memory_check``,
    refuses it when it exceeds the memory available (:func:`vtp_jax.memory.check_fits`, message naming
    ``args.model``). Returns the :class:`vtp_jax.memory.Budget` (for ``oom_guard``). Raises MemoryCheckError.
    Shared with ``vtp-eval``."""
    from vtp_jax import memory

    est = memory.estimate(cfg, dtype, batch_size=batch_size, seq_len=seq_len, logit_rows=logit_rows,
                          vision_images=vision_images, vision_tokens=vision_tokens)
    if getattr(args, "skip_memory_check", False):
        try:
            available = memory.available_bytes()
        except memory.MemoryCheckError:  # a malformed VTP_MEMORY_LIMIT_BYTES does not matter when not checking
            available = None
        return memory.Budget(est.total, available, "not checked (--skip-memory-check)", est)
    return memory.check_fits(est, where=args.model, hint=MEMORY_HINT)


def check_flag_values(args: argparse.Namespace) -> None:
    """The argparse rules of every numeric flag, applied again to a Namespace built in Python (the command line
    has already enforced them): names the flag and the value. Shared with ``vtp-eval``. Raises InputError."""
    rules = {"seed": argtypes.SEED, "warmup": argtypes.NON_NEGATIVE, "runs": argtypes.POSITIVE,
             "keep": argtypes.POSITIVE, "keep_ratio": argtypes.PROBABILITY, "layer": argtypes.NON_NEGATIVE,
             "tau": argtypes.UNIT_INTERVAL, "cls_layer": argtypes.integer(), "max_new_tokens": argtypes.POSITIVE,
             "top_p": argtypes.TOP_P, "gen_length": argtypes.POSITIVE, "steps": argtypes.POSITIVE,
             "block_length": argtypes.POSITIVE, "cfg": argtypes.GUIDANCE, "temperature": argtypes.TEMPERATURE,
             "max_image_pixels": argtypes.POSITIVE, "task_seed": argtypes.SEED, "limit": argtypes.POSITIVE,
             "batch_size": argtypes.POSITIVE, "score_step": argtypes.NON_NEGATIVE, "min_pixels": argtypes.POSITIVE,
             "max_pixels": argtypes.POSITIVE}
    for name, rule in rules.items():
        value = getattr(args, name, None)
        if value is not None:
            try:
                argtypes.check_value("--" + name.replace("_", "-"), value, rule)
            except ValueError as e:
                raise InputError(str(e)) from None


def default_predictor(method: str, predictor: str | None, model_dir: str) -> str | None:
    """DyRate's predictor path: ``predictor`` when given; else, when the ``+``-joined ``method`` includes
    ``dyrate``, ``<model_dir>/dyrate_predictor.safetensors`` if that file exists; else None (DyRate then refuses
    with its own message). Shared with ``vtp-eval``."""
    from vtp_jax.pruning.dyrate import PREDICTOR_FILE

    if predictor is not None or "dyrate" not in [n.strip() for n in method.split("+")]:
        return predictor
    path = os.path.join(model_dir, PREDICTOR_FILE)
    return path if os.path.isfile(path) else None
