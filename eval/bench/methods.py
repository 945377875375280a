"""Which variants ``vtp-bench`` times: pruning methods (``--methods`` / ``--llada-methods``), keep percentages
(``--keeps``), variant names and the method objects (built as ``vtp-generate`` builds them).

A family's methods are the registered ones whose stage its generator runs (``Family.stages``,
:mod:`vtp_jax.families`); the flag that selects them depends on the family's generator kind
(:data:`METHODS_FLAG`).
"""

from __future__ import annotations

import argparse
from typing import Any

from eval.bench.errors import BenchError
from vtp_jax import families
from vtp_jax.families import AUTOREGRESSIVE, MASKED_DIFFUSION

DEFAULT_KEEPS = "50,25,10"  # --keeps: percent of the visual tokens kept (each method with a keep count, both families)
# Registered methods not benchmarked by default (and refused by --methods / --llada-methods), with the reason.
NOT_BENCHED = {"dyrate": "it needs a trained rate predictor (vtp-train-dyrate), which random weights do not have"}
# Order of the variants in the tables (methods registered later and not listed here follow in registry order).
METHOD_ORDER = ("fastv", "redvtp", "llada-fastv", "todre", "divprune", "random", "todre-relevance")
# The flag that selects a family's pruning methods, by its generator kind.
METHODS_FLAG = {AUTOREGRESSIVE: "--methods", MASKED_DIFFUSION: "--llada-methods"}


def methods_flag(family: str) -> str:
    """The flag that selects ``family``'s pruning methods (:data:`METHODS_FLAG` of its generator kind)."""
    return METHODS_FLAG[families.get(family).kind]


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

    return bool(METHODS[name].takes_keep)


def parse_methods(spec: str | None, family: str) -> list[str]:
    """``--methods`` / ``--llada-methods``: comma-separated registered names for ``family`` (None = every one,
    :func:`family_methods`; "" = none: only the unpruned baselines). Raises BenchError naming the problem."""
    if spec is None:
        return family_methods(family)
    from vtp_jax.pruning import METHODS
    from vtp_jax.runtime import family_stages

    flag, fitting = methods_flag(family), family_methods(family)
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
    --method NAME --keep-ratio pct/100`` builds it (keep count by the family's ``keep_rounding``: LLaVA rounds
    ``N_v · ratio``, LLaDA-V floors it; at least 1); ``options`` that the method's dataclass does not declare are
    dropped; methods with a ``seed`` get 0 (vtp-generate's default ``--seed``); ToDRE's pivot stays automatic
    (class-token attention on CLIP, the norm pivot on SigLIP). None for "none". Raises BenchError."""
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


def methods_spec(args: argparse.Namespace, family: str) -> str | None:
    """The value of ``family``'s methods flag (:func:`methods_flag`) in ``args`` (None when not given)."""
    return getattr(args, methods_flag(family).removeprefix("--").replace("-", "_"), None)


def keeps_spec(args: argparse.Namespace) -> str:
    """The value of ``--keeps`` in ``args`` (:data:`DEFAULT_KEEPS` when not given)."""
    return DEFAULT_KEEPS if getattr(args, "keeps", None) is None else args.keeps


def selection(args: argparse.Namespace, family: str, default: str | None = None) -> tuple[list[str], list[float]]:
    """(pruning methods, keep percentages) of ``family`` from the flags; ``default`` replaces an absent methods
    flag (None: every method, :func:`family_methods`). Raises BenchError."""
    spec = methods_spec(args, family)
    return parse_methods(default if spec is None else spec, family), parse_keeps(keeps_spec(args))


def check_selection(args: argparse.Namespace) -> None:
    """Checks the methods flag of every registered family and ``--keeps`` (before anything runs). Raises
    BenchError."""
    for family in families.families():
        parse_methods(methods_spec(args, family), family)
    parse_keeps(keeps_spec(args))
