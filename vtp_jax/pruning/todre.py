"""ToDRE stage 1 — diversity before the LLM (arXiv 2505.18757, "ToDRE", stage 1; no public code; summarised in
the paper's description of stage 1). Stage 2 (task relevance inside the LLM) is a separate, in-LLM piece.

Algorithm (per image, ``keep`` static):
  - X = the projector outputs of the N_v visual tokens (the LLM embedding space), rows L2-normalised (float32);
  - pivot p (see below);
  - greedy max-sum diversification: S = X·x_p; S_p = +∞; repeat keep − 1 times: c = argmin S; S += X·x_c;
    S_c = +∞. Each step adds the token with the smallest summed cosine similarity to the selected set, i.e. the
    largest summed cosine distance. The loop is a ``lax.fori_loop`` (one mat-vec of [N_v, D] per step, no N_v × N_v
    matrix); the kept indices are sorted ascending. Ties go to the lower index, also near ties within a relative
    1e-5 (:func:`vtp_jax.pruning.core.argbest`: the shared ``image_newline`` tokens tie exactly, and float32 may
    break such ties differently for different batch layouts). Similarities use float32 and
    ``Precision.HIGHEST`` (no TF32 on GPU), so choices are reproducible. The paper's default keep is ≈ 10%.

Pivot (``pivot``):
  - ``"cls"`` (the paper's, and the default where the tower has a class token — CLIP / LLaVA): the token with the
    highest head-averaged class-token attention ``softmax(q_CLS · Kᵀ / √d)`` at one vision-tower layer.
    **Which layer.** The paper reads it at "the last layer of the vision encoder". LLaVA takes its features from
    hidden state −2, so the last encoder layer that runs — the one whose output the LLM sees — is layer N − 1 of
    CLIP's N (23 of 24 for LLaVA-1.5); CLIP's final layer feeds nothing in LLaVA and is not run here. The default
    (``cls_layer=None``) is therefore the attention inside the layer that produces the vision features (the deepest
    one if several feature layers are concatenated) — free, since that layer runs anyway, and the layer VisionZip
    also reads its class-token attention from (the paper's class-token pivot). ``cls_layer`` picks another layer in HF
    ``hidden_states`` indexing: ``k ≥ 1`` = the attention of layer k (whose output is hidden state k), ``-1`` =
    CLIP's final layer (the tower then runs that one extra layer). The class token's own column is dropped when
    LLaVA drops the class token (``vision_feature_select_strategy="default"``); with ``"full"`` the class token is
    visual token 0 and competes. The row is not renormalised after dropping that column (the argmax is unchanged).
  - ``"norm"`` (the default for towers without a class token — SigLIP, i.e. LLaDA-V): the token whose projector output
    has the largest L2 norm (newline tokens included on anyres sequences). Why: ViTs concentrate global information
    in a few high-norm tokens, which also draw the class token's attention (Darcet et al., ICLR 2024, "Vision
    Transformers Need Registers"), so the largest-norm token is the closest free proxy of the [CLS]-attended one;
    and the paper reports that random, centre and farthest pivots cost only 0.1–0.4 points against the [CLS] pivot,
    so the pivot barely matters.
  - ``"center"``: the token closest (cosine) to the centroid of the normalised features — a feature-space centre,
    well defined on packed anyres sequences where a spatial centre is not (the paper's "centre" may be spatial).
  - ``"first"``: visual token 0.

Anyres (LLaDA-V): the selection runs over the packed visual sequence exactly as it reaches the LLM — base tile,
high-resolution grid and the ``image_newline`` tokens, which are scored like any other token (all newline tokens
share one vector, so once one is kept the others look redundant and are rarely kept).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from vtp_jax.pruning.stages import PreLLMSelection
from vtp_jax.pruning.core import PruningError, argbest, chosen_mask, fill_selection
from vtp_jax.pruning.divprune import HIGHEST, unit_rows
from vtp_jax.pruning.registry import register

PIVOTS = ("cls", "norm", "center", "first")


def max_sum_diversify(x_unit: jax.Array, pivot: jax.Array, keep: int, valid: jax.Array | None = None,
                      row_keep: jax.Array | None = None) -> jax.Array:
    """ToDRE's greedy max-sum diversification.

    x_unit: float32 [B, N, D] unit rows; pivot: int [B] (selected first); keep: static int in [1, N].
    Returns int32 [B, keep], ascending. With ``valid`` bool [B, N] and ``row_keep`` int32 [B] (a batch of
    different visual-token counts): padding slots are never picked, row b keeps its first ``row_keep[b]`` picks
    (greedy picks do not depend on how many follow) and the bucket is filled by
    :func:`vtp_jax.pruning.core.fill_selection`.
    """
    b, n = x_unit.shape[:2]
    rows = jnp.arange(b)
    pivot = pivot.astype(jnp.int32)

    def sim(c):  # X · x_c for every row: [B, N]
        return jnp.einsum("bnd,bd->bn", x_unit, x_unit[rows, c], precision=HIGHEST)

    s = sim(pivot)
    if valid is not None:
        s = jnp.where(valid, s, jnp.inf)
    s = s.at[rows, pivot].set(jnp.inf)
    chosen = jnp.zeros((b, keep), jnp.int32).at[:, 0].set(pivot)

    def body(i, carry):
        s, chosen = carry
        c = argbest(s, largest=False)
        s = (s + sim(c)).at[rows, c].set(jnp.inf)
        return s, chosen.at[:, i].set(c)

    _, chosen = jax.lax.fori_loop(1, keep, body, (s, chosen))
    if valid is None:
        return jnp.sort(chosen, axis=1)
    return fill_selection(chosen_mask(chosen, row_keep, n), valid, keep)


@register
@dataclasses.dataclass(frozen=True)
class ToDRE(PreLLMSelection):
    """ToDRE stage 1.

    keep: visual tokens kept (static). pivot: None (auto: "cls" with a class token, else "norm") | "cls" | "norm" |
    "center" | "first". cls_layer: vision layer of the class-token attention, HF ``hidden_states`` indexing
    (None = the vision feature layer; −1 = the tower's final layer); only with the "cls" pivot. reindex: renumber
    positions contiguously after pruning (default: kept tokens keep their original positions).
    """

    keep: int
    pivot: str | None = None
    cls_layer: int | None = None
    reindex: bool = False

    name = "todre"
    default_keep_ratio = 0.1  # ToDRE's headline setting: 10% of the visual tokens

    def validate(self, num_visual: int, num_layers: int) -> None:
        """Raises PruningError unless 1 ≤ keep ≤ N_v and the pivot is known."""
        self.check_keep(num_visual)
        if self.pivot is not None and self.pivot not in PIVOTS:
            raise PruningError(f"ToDRE pivot must be one of {', '.join(PIVOTS)}, got {self.pivot!r}")

    def cls_probe(self, cfg) -> int | None:
        """The 1-based vision-tower layer whose class-token attention row this method needs, or None.

        cfg: the model config (``vision`` with ``kind`` / ``num_hidden_layers``, ``vision_feature_layer``).
        Raises PruningError: pivot "cls" on a tower without a class token, ``cls_layer`` out of range or given
        with another pivot.
        """
        vision = cfg.vision
        has_cls = vision.kind == "clip"
        pivot = self.pivot or ("cls" if has_cls else "norm")
        if pivot != "cls":
            if self.cls_layer is not None:
                raise PruningError(f"ToDRE cls_layer only applies to the 'cls' pivot (pivot here: {pivot!r})")
            return None
        if not has_cls:
            raise PruningError(
                f"ToDRE pivot 'cls' needs a vision tower with a class token; the {vision.kind} tower has none "
                "(use pivot 'norm', 'center' or 'first')"
            )
        n = vision.num_hidden_layers
        if self.cls_layer is None:
            layer = max(l % (n + 1) for l in cfg.vision_feature_layer)
        elif -n <= self.cls_layer <= n and self.cls_layer != 0:
            layer = self.cls_layer % (n + 1)
        else:
            raise PruningError(
                f"ToDRE cls_layer must be in [-{n}, -1] or [1, {n}] for a {n}-layer vision tower, got {self.cls_layer}"
            )
        if layer < 1:
            raise PruningError("ToDRE pivot 'cls': the vision features come from the embeddings (no layer runs)")
        return layer

    def pivot_index(self, features: jax.Array, x_unit: jax.Array, cls_attention: jax.Array | None,
                    valid: jax.Array | None = None) -> jax.Array:
        """The pivot per row, int32 [B]. features [B, N_v, D]; x_unit its unit rows; cls_attention float [B, N_v]
        (the class-token attention of the visual tokens) or None; valid bool [B, N_v] or None (every slot real):
        padding slots are never the pivot and do not enter the centroid."""
        pivot = self.pivot or ("cls" if cls_attention is not None else "norm")
        only = (lambda v: v) if valid is None else (lambda v: jnp.where(valid, v, -jnp.inf))
        if pivot == "cls":
            if cls_attention is None:
                raise PruningError("ToDRE pivot 'cls' needs the class-token attention row of the vision tower")
            return argbest(only(cls_attention.astype(jnp.float32)), largest=True)
        if pivot == "norm":
            return argbest(only(jnp.linalg.norm(features.astype(jnp.float32), axis=-1)), largest=True)
        if pivot == "center":
            if valid is None:
                centroid = jnp.mean(x_unit, axis=1)
            else:
                w = valid.astype(jnp.float32)
                centroid = jnp.einsum("bnd,bn->bd", x_unit, w, precision=HIGHEST) / jnp.sum(w, 1, keepdims=True)
            scores = jnp.einsum("bnd,bd->bn", x_unit, centroid, precision=HIGHEST)
            return argbest(only(scores), largest=True)
        return jnp.zeros(features.shape[0], jnp.int32)

    def select(self, features: jax.Array, cls_attention: jax.Array | None = None, *, valid: jax.Array | None = None,
               row_keep: jax.Array | None = None) -> jax.Array:
        """features: projector outputs [B, N_v, D]; cls_attention: float [B, N_v] or None → kept int32 [B, keep],
        ascending. ``valid`` / ``row_keep``: a batch of different visual-token counts (see
        :func:`max_sum_diversify`)."""
        x = unit_rows(features)
        return max_sum_diversify(x, self.pivot_index(features, x, cls_attention, valid), self.keep, valid, row_keep)
