"""Visual token pruning methods and the shared select-and-compact helpers."""

from vtp_jax.pruning.core import PruningError, compact, resolve_keep, select_topk, visual_positions, visual_scores
from vtp_jax.pruning.registry import METHODS, make_method
from vtp_jax.pruning import fastv as _fastv  # noqa: F401  (registers "fastv")
from vtp_jax.pruning import redvtp as _redvtp  # noqa: F401  (registers "redvtp", "llada-fastv")
from vtp_jax.pruning import divprune as _divprune  # noqa: F401  (registers "divprune")
from vtp_jax.pruning import random_prune as _random_prune  # noqa: F401  (registers "random")
from vtp_jax.pruning import todre as _todre  # noqa: F401  (registers "todre")
from vtp_jax.pruning import todre_relevance as _todre_relevance  # noqa: F401  (registers "todre-relevance")
from vtp_jax.pruning import dyrate as _dyrate  # noqa: F401  (registers "dyrate")

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
