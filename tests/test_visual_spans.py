"""Variable visual-token counts in one batch (:mod:`vtp_jax.generation.visual_spans`): padded visual spans, per-row
keep counts inside a static keep bucket, and — on the tiny random-weight LLaDA-V — a batch of two images of
different anyres layouts equals the two single runs for every diffusion method (tokens and kept indices).

The LLaVA-NeXT side (batch of two vs transformers' ``generate``, every autoregressive method vs single runs) is in
tests/test_llava_next_parity.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from vtp_jax.generation.visual_spans import pad_visual_spans, unpad_kept
from vtp_jax.pruning.core import PruningError, fill_selection, select_topk
from vtp_jax.pruning.divprune import DivPrune, max_min_diversify, unit_rows
from vtp_jax.pruning.fastv import FastV
from vtp_jax.pruning.random_prune import RandomPrune
from vtp_jax.pruning.todre import ToDRE

IMG = 9  # image placeholder id of the layout tests


def test_pad_visual_spans_inserts_masked_slots_after_each_rows_image():
    ids = np.array([[0, 0, 1, IMG, IMG, IMG, 2, 3],
                    [0, 0, 0, 1, IMG, 2, 3, 4]])
    mask = (np.arange(8)[None] >= np.array([[2], [3]])).astype(np.int32)
    out_ids, out_mask, counts = pad_visual_spans(ids, mask, IMG)
    assert counts.tolist() == [3, 1]
    np.testing.assert_array_equal(out_ids[0], ids[0])  # the largest row is unchanged
    np.testing.assert_array_equal(out_ids[1], [0, 1, IMG, IMG, IMG, 2, 3, 4])  # two slots after its image
    np.testing.assert_array_equal(out_mask[1], [0, 1, 1, 0, 0, 1, 1, 1])
    positions = np.maximum(np.cumsum(out_mask[1]) - 1, 0)  # the generators' rule: padding slots take no position
    np.testing.assert_array_equal(positions[out_mask[1] == 1], np.arange(5))
    # a row that no longer fits grows the batch to the next bucket
    tight = np.array([[1, IMG, IMG, IMG, 2], [1, IMG, 2, 3, 4]])
    out_ids, out_mask, _ = pad_visual_spans(tight, np.ones_like(tight), IMG, bucket=4)
    assert out_ids.shape == (2, 8) and out_mask[1].tolist() == [0, 1, 1, 0, 0, 1, 1, 1]
    same = np.array([[1, IMG, 2], [IMG, 2, 3]])
    assert pad_visual_spans(same, np.ones_like(same), IMG)[0].tolist() == same.tolist()  # equal rows: unchanged
    with pytest.raises(ValueError, match="not one contiguous run"):
        pad_visual_spans(np.array([[IMG, 1, IMG], [1, 1, IMG]]), np.ones((2, 3), int), IMG)


def test_fill_selection_pads_with_the_rows_padding_slots():
    chosen = np.zeros((2, 6), bool)
    chosen[0, [1, 4]] = True  # row 0: N_v = 6, keeps 2
    chosen[1, [2]] = True  # row 1: N_v = 4 (slots 4, 5 are padding), keeps 1
    valid = np.arange(6)[None] < np.array([[6], [4]])
    kept = np.asarray(fill_selection(jnp.asarray(chosen), jnp.asarray(valid), 3))
    np.testing.assert_array_equal(kept, [[0, 1, 4], [2, 4, 5]])  # row 0 has no padding: a valid filler (masked
    # by the caller's keep count); row 1 fills with its padding slots 4, 5
    np.testing.assert_array_equal(unpad_kept(kept, [6, 4]), [[0, 1, 4], [2, -1, -1]])


def _rows_alone(fn, x, counts):
    """fn applied to each row alone, unpadded (the single-run reference)."""
    return [np.asarray(fn(x[b : b + 1, :n], b))[0] for b, n in enumerate(counts)]


@pytest.mark.parametrize("method", ["topk", "todre", "todre-center", "divprune", "random"])
def test_masked_selection_equals_each_row_alone(method):
    rng = np.random.default_rng(0)
    counts, ratio = [23, 14, 30], 0.3
    n = max(counts)
    x = rng.normal(size=(3, n, 8)).astype(np.float32)
    x[1, 14:] = x[2, 14:]  # padding slots hold arbitrary values: they must never matter
    valid = np.arange(n)[None] < np.array(counts)[:, None]
    keeps = np.array([round(ratio * c) for c in counts], np.int32)
    k = int(keeps.max())
    if method == "topk":
        scores = x[..., 0]
        batched = select_topk(jnp.asarray(scores), k, jnp.asarray(valid), jnp.asarray(keeps))
        alone = [np.sort(np.argsort(-scores[b, :c], kind="stable")[: keeps[b]]) for b, c in enumerate(counts)]
    elif method.startswith("todre"):
        m = ToDRE(keep=k, pivot="center" if method == "todre-center" else "norm")
        batched = m.select(jnp.asarray(x), valid=jnp.asarray(valid), row_keep=jnp.asarray(keeps))
        alone = [np.asarray(ToDRE(keep=int(keeps[b]), pivot=m.pivot).select(jnp.asarray(x[b : b + 1, :c])))[0]
                 for b, c in enumerate(counts)]
    elif method == "divprune":
        batched = DivPrune(keep=k).select(jnp.asarray(x), valid=jnp.asarray(valid), row_keep=jnp.asarray(keeps))
        alone = [np.asarray(max_min_diversify(unit_rows(jnp.asarray(x[b : b + 1, :c])), int(keeps[b])))[0]
                 for b, c in enumerate(counts)]
    else:  # random: row b's draw depends on (seed, b, token), not on N_v — compare with row b of unpadded batches
        m = RandomPrune(keep=k, seed=5)
        batched = m.select(jnp.asarray(x), valid=jnp.asarray(valid), row_keep=jnp.asarray(keeps))
        alone = []
        for b, c in enumerate(counts):
            same = jnp.asarray(np.repeat(x[b : b + 1, :c], 3, axis=0))  # three rows of this row's N_v
            alone.append(np.asarray(RandomPrune(keep=int(keeps[b]), seed=5).select(same))[b])
    got = unpad_kept(np.asarray(batched), counts)
    for b in range(3):
        np.testing.assert_array_equal(got[b, : keeps[b]], alone[b], err_msg=f"row {b}")
        assert np.all(got[b, keeps[b]:] == -1)


def test_row_keeps_follow_the_ratio_or_the_fixed_count():
    assert FastV(keep=10, keep_ratio=0.25).row_keeps([40, 30, 2]).tolist() == [10, 8, 1]  # round, at least 1
    assert FastV(keep=10, keep_ratio=0.25, keep_rounding="floor").row_keeps([40, 31]).tolist() == [10, 7]
    assert FastV(keep=5).row_keeps([40, 30]).tolist() == [5, 5]  # no ratio: the same count in every row
    with pytest.raises(PruningError, match="a row holds 3, keep is 5"):
        FastV(keep=5).row_keeps([40, 3])


def test_build_method_carries_the_ratio():
    from vtp_jax import runtime

    m = runtime.build_method("fastv", "llava", 100, 4, keep_ratio=0.3)
    assert (m.keep, m.keep_ratio, m.keep_rounding) == (30, 0.3, "round")
    m = runtime.build_method("fastv", "llava", 100, 4, keep=7)
    assert (m.keep, m.keep_ratio) == (7, None)


# ---- LLaDA-V: a batch of two layouts equals the single runs --------------------------------------------------------

SIZES = dict(image_size=32, patch_size=8, vision_hidden=32, vision_layers=2, vision_heads=4, vision_mlp=64,
             text_hidden=64, text_layers=2, text_heads=4, text_kv_heads=2, text_mlp=128, vocab_size=320,
             max_position_embeddings=256, max_grid=3, max_num_patches=4)
IMAGES = [(60, 90), (90, 40)]  # (height, width): two anyres layouts, different N_v (no tile repeats another:
# a 32 × 32 image would make its base tile and its one grid tile equal, and DivPrune's distances exact ties)
PROMPTS = ["What is in the picture?", "Describe it."]


class LladaCase:
    """The converted tiny LLaDA-V, its processor and the mixed / single batches."""


@pytest.fixture(scope="module")
def llada(tmp_path_factory):
    from PIL import Image

    from convert import convert
    from vtp_jax import checkpoint
    from vtp_jax.processing import load_processor
    from vtp_jax.testbed import hf_llada_v

    jax.config.update("jax_default_matmul_precision", "highest")
    root = tmp_path_factory.mktemp("visual_spans_llada")
    out = convert(hf_llada_v.build_tiny_llada_v(str(root / "hf"), **SIZES), str(root / "jax"), progress=False)
    c = LladaCase()
    c.model, c.cfg, _ = checkpoint.load(out)
    proc = load_processor(out, c.cfg)
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, hw + (3,), dtype=np.uint8)) for hw in IMAGES]
    c.mixed = proc(images, PROMPTS)
    c.singles = [proc([im], [q]) for im, q in zip(images, PROMPTS)]
    c.same = [proc([im, im], [q, q]) for im, q in zip(images, PROMPTS)]  # for random: row b of an unpadded batch
    return c


LLADA_SPECS = ["none", "redvtp", "llada-fastv", "todre", "divprune", "random", "todre+redvtp"]


@pytest.mark.parametrize("spec", LLADA_SPECS)
def test_llada_v_mixed_batch_equals_single_runs(llada, spec):
    from vtp_jax import runtime
    from vtp_jax.generation.diffusion import DiffusionConfig, DiffusionGenerator

    c = llada
    counts = [s.num_visual_tokens for s in c.singles]
    assert counts[0] != counts[1] and c.mixed.num_visual_tokens == max(counts)
    assert isinstance(c.mixed.image_inputs["image_size"][0], tuple)  # one (height, width) per row
    dcfg = DiffusionConfig(gen_length=8, block_length=4, steps=4, mask_id=c.cfg.mask_token_id)
    layers = c.cfg.text.num_hidden_layers

    def generator(n_v):
        method = None if spec == "none" else runtime.build_methods(spec, "llada_v", n_v, layers, keep_ratio=None)
        return DiffusionGenerator(c.model, dcfg, method)

    out = generator(c.mixed.num_visual_tokens).generate_arrays(c.mixed.input_ids, c.mixed.attention_mask,
                                                      c.mixed.image_inputs)
    for b, single in enumerate(c.singles):
        ref_batch, row = (c.same[b], b) if spec == "random" else (single, 0)
        ref = generator(single.num_visual_tokens).generate_arrays(ref_batch.input_ids, ref_batch.attention_mask,
                                                           ref_batch.image_inputs)
        np.testing.assert_array_equal(out.tokens[b], ref.tokens[row], err_msg=f"{spec} row {b}")
        own = out.kept[b][out.kept[b] >= 0]
        np.testing.assert_array_equal(own, ref.kept[row], err_msg=f"{spec} row {b}")
        for name, kept in out.stages.items():
            np.testing.assert_array_equal(kept[b][kept[b] >= 0], ref.stages[name][row], err_msg=name)
    # The tiny random LLaDA-V's greedy tokens are nearly constant, so the tokens alone prove little: the kept
    # indices above (data dependent for every method but random) and the logits test below carry the check.


def test_llada_v_padded_spans_give_each_rows_own_logits(llada):
    """One bidirectional forward over the padded batch: every real position's logits equal the single image's
    (fp32, 1e-5), and the padding slots' own outputs are never read."""
    from vtp_jax.generation.visual_spans import pad_visual_spans

    c = llada
    ids, mask, counts = pad_visual_spans(c.mixed.input_ids, c.mixed.attention_mask, c.cfg.image_token_id)
    kw = {k: v for k, v in c.mixed.image_inputs.items() if k != "pixel_values"}
    visual = c.model.image_features(jnp.asarray(c.mixed.image_inputs["pixel_values"]), **kw)
    assert visual.shape[1] == max(counts)
    logits = np.asarray(c.model.forward_visual(jnp.asarray(ids), visual, jnp.asarray(mask)))
    for b, single in enumerate(c.singles):
        skw = {k: v for k, v in single.image_inputs.items() if k != "pixel_values"}
        ref = np.asarray(c.model(jnp.asarray(single.input_ids), jnp.asarray(single.image_inputs["pixel_values"]),
                                 jnp.asarray(single.attention_mask), **skw))[0]
        ours = logits[b][mask[b] == 1]
        ref = ref[single.attention_mask[0] == 1]
        assert ours.shape == ref.shape and np.abs(ref).max() > 0.1
        assert np.abs(ours - ref).max() <= 1e-5, f"row {b}: {np.abs(ours - ref).max():.2e}"
