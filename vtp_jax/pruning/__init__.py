"""Visual token pruning methods and the shared select-and-compact helpers."""

from vtp_jax.pruning.core import PruningError, compact, resolve_keep, select_topk, visual_positions, visual_scores
from vtp_jax.pruning.registry import METHODS, make_method
from vtp_jax.pruning import fastv as _fastv  # noqa: F401  (registers "fastv")
from vtp_jax.pruning import redvtp as _redvtp  # noqa: F401  (registers "redvtp")

__all__ = [
    "METHODS",
    "PruningError",
    "compact",
    "make_method",
    "resolve_keep",
    "select_topk",
    "visual_positions",
    "visual_scores",
]
