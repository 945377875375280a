"""What every generator returns: one :class:`GenerationOutput` for both generator kinds (autoregressive and masked
diffusion), so front ends read tokens, answer lengths, kept visual tokens, per-stage records and timings the same
way whatever the family.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vtp_jax.families.base import AUTOREGRESSIVE, GENERATOR_KINDS, MASKED_DIFFUSION


def count_new_tokens(row: np.ndarray, stop_ids: tuple[int, ...]) -> int:
    """Answer tokens of one generated row: up to and including the first stop id (the whole row without one).
    The one counting rule of both generator kinds."""
    for i, tok in enumerate(row):
        if int(tok) in stop_ids:
            return i + 1
    return len(row)


@dataclasses.dataclass
class GenerationOutput:
    """One generation call's result (row b of every array is prompt b).

    Attributes:
      tokens: int32 [B, N] generated ids (N = ``max_new_tokens`` autoregressive, ``gen_length`` diffusion); after a
        row's first stop id the autoregressive generator pads; the diffusion one leaves the mask id there under the
        stop rule (``DiffusionConfig.early_stop``), else keeps what it unmasked.
      kept: int32 [B, K] visual-token indices (into the N_v visual tokens, ascending) the decoder kept: all N_v
        without pruning; with ToDRE stage 2 the set before it (see ``stage2_dropped``).
      num_new_tokens: per row, the answer's length: tokens up to and including the first stop id
        (:func:`count_new_tokens`; N without one).
      kind: the generator kind, ``"autoregressive"`` or ``"masked_diffusion"``.
      decode_s: seconds of the generation loop — autoregressive: the decode loop (tokens 2 … N); diffusion: every
        denoising step (the first one, with RedVTP's scoring and compaction, included).
      prefill_s: autoregressive: seconds of the prefill (vision tower, projector, prompt, first token); None for
        diffusion.
      encode_s: diffusion: seconds of vision tower + projector + prompt embedding; None autoregressive (part of the
        prefill there).
      stages: per method name, what it kept: int32 [B, keep] visual indices (pre-LLM methods, FastV, RedVTP), or a
        dict for ``todre-relevance`` (``{"dropped", "alpha_t2v", "alpha_v2t", "layer", "tau"}``) and ``dyrate``
        (``{"kept_per_token", "rate_per_token", "rates", "layer"}``).
      stage2_dropped: bool [B] when ToDRE stage 2 ran (rows that kept no visual token from layer ℓ on), else None.
      steps: diffusion: denoising steps the loop ran (fewer than ``DiffusionConfig.steps`` when every row stopped
        early under the stop rule); None autoregressive.
      kept_per_token / rate_per_token: DyRate only (else None): int32 [B, N] — visual tokens in the KV cache when
        token i was generated (token 0 by prefill: all of them) and the rate index chosen after it.
    """

    tokens: np.ndarray
    kept: np.ndarray
    num_new_tokens: list[int]
    kind: str
    decode_s: float
    prefill_s: float | None = None
    encode_s: float | None = None
    stages: dict = dataclasses.field(default_factory=dict)
    stage2_dropped: np.ndarray | None = None
    kept_per_token: np.ndarray | None = None
    rate_per_token: np.ndarray | None = None
    steps: int | None = None

    def __post_init__(self):
        if self.kind not in GENERATOR_KINDS:
            raise ValueError(f"kind {self.kind!r} is not one of {GENERATOR_KINDS}")

    @property
    def latency_s(self) -> float:
        """End to end, seconds: encode (diffusion) or prefill (autoregressive) plus the generation loop."""
        return float((self.encode_s or 0.0) + (self.prefill_s or 0.0) + self.decode_s)

    @property
    def denoise_s(self) -> float:
        """Diffusion's name for :attr:`decode_s` (every denoising step), seconds."""
        return self.decode_s

    @property
    def timings(self) -> dict[str, float]:
        """``{encode_s | prefill_s, decode_s, latency_s}`` in seconds (the phases this kind has)."""
        first = {"prefill_s": self.prefill_s} if self.kind == AUTOREGRESSIVE else {"encode_s": self.encode_s}
        return {**first, "decode_s": self.decode_s, "latency_s": self.latency_s}

    @property
    def tokens_per_s(self) -> float:
        """Throughput, tokens per second. Autoregressive: tokens the decode loop produced (all rows; each row's
        first token comes from the prefill) per second of decode time. Diffusion: decoded positions (B · N, the
        work done whatever the answers' lengths) per second of end-to-end latency. NaN when the time is 0."""
        if self.kind == MASKED_DIFFUSION:
            return self.tokens.size / self.latency_s if self.latency_s > 0 else float("nan")
        produced = sum(max(n - 1, 0) for n in self.num_new_tokens)
        return produced / self.decode_s if self.decode_s > 0 else float("nan")

    def answer_ids(self, row: int = 0) -> list[int]:
        """Row ``row``'s answer: its first ``num_new_tokens[row]`` ids (the stop id included)."""
        return [int(t) for t in self.tokens[row][: self.num_new_tokens[row]]]

    def decode_visual_kv_cut(self, num_visual: int) -> float:
        """DyRate: share of the visual KV entries the decode steps did not attend, over every row's decode steps
        (tokens 1 … n − 1 of each row; token 0 comes from prefill): 1 − Σ kept / (steps · N_v). NaN without
        decode steps or without DyRate."""
        if self.kept_per_token is None:
            return float("nan")
        kept = [self.kept_per_token[b, 1:n] for b, n in enumerate(self.num_new_tokens)]
        steps = sum(len(k) for k in kept)
        return 1.0 - float(sum(int(k.sum()) for k in kept)) / (steps * num_visual) if steps else float("nan")
