"""RedVTP kept indices against a reference computed from the full eager attention maps of the PyTorch LLaDA-V
stand-in (vtp_jax.testbed.torch_llada_v's ``Reference``), and pruned sampling against an unpruned-shape reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.llada_v_case import llada_inputs, make_case, make_image_processor, processed_pixels
from vtp_jax.generation.diffusion import DiffusionConfig, DiffusionGenerator
from vtp_jax.pruning.core import PruningError
from vtp_jax.pruning.redvtp import RedVTP

SIZE = (50, 90)  # a 2×2 grid with unpadded rows
GEN, STEPS = 8, 4


@pytest.fixture(scope="module")
def image_processor():
    return make_image_processor()


@pytest.fixture(scope="module")
def case():
    return make_case(2)  # GQA


def reference_scores(ref, ids, mask, visual, mask_id: int, counts0: int) -> np.ndarray:
    """RedVTP's scores from full attention maps: step 0 (greedy, low-confidence) on [prompt, MASK × GEN];
    R = response positions still masked after it; score_j = mean over R, heads, layers of A[i, j]."""
    b, p = ids.shape
    ids_full = np.concatenate([ids, np.full((b, GEN), mask_id)], axis=1)
    mask_full = np.concatenate([mask, np.ones((b, GEN), mask.dtype)], axis=1)
    ids_t, mask_t = torch.from_numpy(ids_full), torch.from_numpy(mask_full)
    is_img = ids_t == ref.config["image_token_index"]
    with torch.no_grad():
        emb = ref.llama.embed_tokens(torch.where(is_img, 0, ids_t)).clone()
        for r in range(b):
            emb[r, is_img[r]] = visual[r]
        pos = (mask_t.cumsum(1) - 1).clamp(min=0)
        t = ids_full.shape[1]
        bias = torch.zeros(b, 1, t, t).masked_fill(~mask_t.bool()[:, None, None, :], torch.finfo(torch.float32).min)
        out = ref.llama(inputs_embeds=emb, attention_mask=bias, position_ids=pos, output_attentions=True)
        logits = ref.lm_head(out.last_hidden_state)[:, p:].double()
    probs = torch.softmax(logits, -1)
    conf = probs.max(-1).values.numpy()  # greedy: the chosen token is the argmax
    transferred = np.zeros((b, GEN), bool)
    for r in range(b):
        transferred[r, np.argsort(-conf[r], kind="stable")[:counts0]] = True
    still = ~transferred
    att = torch.stack(out.attentions).mean(dim=(0, 2)).numpy()  # [B, T, T]: mean over layers and heads
    scores = np.stack([att[r, p:][still[r]].mean(0)[:p] for r in range(b)])
    return scores, is_img[:, :p].numpy()


@pytest.mark.parametrize("keep", [1, 9, 20])
def test_kept_indices_match_full_attention_reference(case, image_processor, keep):
    model = case.models[4]
    pix = processed_pixels(image_processor, SIZE, seed=2)
    ids, mask = llada_inputs(model, SIZE, seed=4)
    n_v = model.num_visual_tokens(SIZE)
    cfg = DiffusionConfig(gen_length=GEN, block_length=GEN, steps=STEPS, mask_id=case.config["mask_token_id"])
    gen = DiffusionGenerator(model, cfg, RedVTP(keep=keep))
    out = gen.generate_arrays(ids, mask, {"pixel_values": pix, "image_size": SIZE})
    with torch.no_grad():
        visual = case.ref.image_features(torch.from_numpy(pix), [SIZE, SIZE], 4)
    scores, is_img = reference_scores(case.ref, ids, mask, visual, cfg.mask_id, GEN // STEPS)
    for r in range(2):
        vis_scores = scores[r][is_img[r]]
        assert vis_scores.shape == (n_v,)
        expected = np.sort(np.argsort(-vis_scores, kind="stable")[:keep])
        np.testing.assert_array_equal(out.kept[r], expected)
    assert out.kept.shape == (2, keep)


def test_pruned_sampling_shortens_the_sequence_and_keep_all_changes_nothing(case, image_processor):
    model = case.models[4]
    pix = processed_pixels(image_processor, SIZE, seed=3)
    ids, mask = llada_inputs(model, SIZE, seed=5)
    n_v = model.num_visual_tokens(SIZE)
    cfg = DiffusionConfig(gen_length=GEN, block_length=GEN // 2, steps=STEPS, mask_id=case.config["mask_token_id"])
    inputs = {"pixel_values": pix, "image_size": SIZE}
    base = DiffusionGenerator(model, cfg).generate_arrays(ids, mask, inputs)
    # keeping every token with original positions must reproduce the unpruned run exactly
    same = DiffusionGenerator(model, cfg, RedVTP(keep=n_v, reindex=False)).generate_arrays(ids, mask, inputs)
    np.testing.assert_array_equal(same.tokens, base.tokens)
    np.testing.assert_array_equal(same.kept[0], np.arange(n_v))
    # a real prune runs the later steps on a shorter sequence: the compiled denoise loop sees fewer tokens
    keep = max(1, n_v // 4)
    gen = DiffusionGenerator(model, cfg, RedVTP(keep=keep))
    out = gen.generate_arrays(ids, mask, inputs)
    assert out.tokens.shape == base.tokens.shape and (out.tokens != cfg.mask_id).all()
    prompt = gen.encode(gen.state, jnp.asarray(ids, jnp.int32), jnp.asarray(mask), {"pixel_values": jnp.asarray(pix)},
                        static=(("image_size", SIZE),))
    carry = gen.initial_carry(ids.shape[0], jax.random.key(0))
    _, short, kept = gen.prune_steps(prompt, carry, temperature=0.0, num_visual=n_v)
    assert short.h.shape[1] == ids.shape[1] - n_v + keep  # later steps really run on fewer tokens
    np.testing.assert_array_equal(kept, out.kept)
    assert gen.compiled_counts() == {"encode": 1, "first_step": 1, "denoise": 1}


def test_keep_out_of_range(case, image_processor):
    model = case.models[4]
    with pytest.raises(PruningError, match="keep must be between 1"):
        RedVTP(keep=0).validate(model.num_visual_tokens(SIZE), 2)
    with pytest.raises(PruningError, match="keep must be between 1"):
        RedVTP(keep=10_000).validate(model.num_visual_tokens(SIZE), 2)


def test_llada_fastv_scores_one_middle_layer(case, image_processor):
    from vtp_jax.pruning import make_method

    model = case.models[4]
    pix = processed_pixels(image_processor, SIZE, seed=2)
    ids, mask = llada_inputs(model, SIZE, seed=4)
    cfg = DiffusionConfig(gen_length=GEN, block_length=GEN, steps=STEPS, mask_id=case.config["mask_token_id"])
    method = make_method("llada-fastv", keep=9, layer=2)
    assert method.probe_layers(2) == (1,) and make_method("llada-fastv", keep=3).probe_layers(8) == (3,)
    out = DiffusionGenerator(model, cfg, method).generate_arrays(ids, mask, {"pixel_values": pix, "image_size": SIZE})
    with torch.no_grad():
        visual = case.ref.image_features(torch.from_numpy(pix), [SIZE, SIZE], 4)
    # reference: the same computation restricted to layer index 1's attention
    b, p = ids.shape
    ids_full = np.concatenate([ids, np.full((b, GEN), cfg.mask_id)], axis=1)
    mask_full = np.concatenate([mask, np.ones((b, GEN), mask.dtype)], axis=1)
    ids_t, mask_t = torch.from_numpy(ids_full), torch.from_numpy(mask_full)
    is_img = ids_t == case.ref.config["image_token_index"]
    with torch.no_grad():
        emb = case.ref.llama.embed_tokens(torch.where(is_img, 0, ids_t)).clone()
        for r in range(b):
            emb[r, is_img[r]] = visual[r]
        t = ids_full.shape[1]
        bias = torch.zeros(b, 1, t, t).masked_fill(~mask_t.bool()[:, None, None, :], torch.finfo(torch.float32).min)
        o = case.ref.llama(inputs_embeds=emb, attention_mask=bias, position_ids=(mask_t.cumsum(1) - 1).clamp(min=0),
                           output_attentions=True)
        conf = torch.softmax(case.ref.lm_head(o.last_hidden_state)[:, p:].double(), -1).max(-1).values.numpy()
    att = o.attentions[1].mean(1).numpy()
    for r in range(b):
        still = np.ones(GEN, bool)
        still[np.argsort(-conf[r], kind="stable")[: GEN // STEPS]] = False
        s = att[r, p:][still].mean(0)[:p][is_img[r, :p].numpy()]
        np.testing.assert_array_equal(out.kept[r], np.sort(np.argsort(-s, kind="stable")[:9]))
