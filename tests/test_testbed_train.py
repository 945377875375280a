"""The testbed trainer's masked-diffusion loss (LLaDA-V): the masking process and the loss against NumPy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vtp_jax.training.testbed.losses import diffusion_loss, diffusion_noise
from vtp_jax.training.testbed.settings import MASK_EPS

MASK_ID = 2


def _case(b=4, t=12, v=7, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, v, (b, t)).astype(np.int32)
    response = np.zeros((b, t), np.int32)
    for i in range(b):  # a response of 2..6 tokens at the end of each row
        response[i, t - 2 - i:] = 1
    logits = rng.normal(size=(b, t, v)).astype(np.float32)
    return ids, response, logits


def _np_ce(logits, ids):
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, ids[..., None], -1)[..., 0]


def test_noise_masks_only_the_response_with_stratified_levels():
    ids, response, _ = _case(b=8)
    noisy, masked, p = (np.asarray(a) for a in diffusion_noise(jax.random.key(3), jnp.asarray(ids),
                                                                jnp.asarray(response), MASK_ID))
    assert not masked[response == 0].any()
    np.testing.assert_array_equal(noisy, np.where(masked, MASK_ID, ids))
    t = np.sort((p - MASK_EPS) / (1 - MASK_EPS))
    np.testing.assert_allclose(np.diff(t), 1 / 8, atol=1e-5)  # one offset, evenly spaced over [0, 1)
    assert 0 <= t[0] < 1 / 8


def test_loss_matches_numpy():
    ids, response, logits = _case()
    noisy, masked, p = diffusion_noise(jax.random.key(0), jnp.asarray(ids), jnp.asarray(response), MASK_ID)
    got = float(diffusion_loss(jnp.asarray(logits), jnp.asarray(ids), masked, p, jnp.asarray(response)))
    m, pn = np.asarray(masked), np.asarray(p)
    assert m.any()
    ce = _np_ce(logits, ids)
    want = np.mean([np.sum(ce[i][m[i]] / pn[i]) / response[i].sum() for i in range(len(ids))])
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("complementary, full_mask, seed", [(False, 0.0, 1), (True, 0.0, 2), (False, 0.5, 3)])
def test_loss_is_unbiased_for_the_mean_response_cross_entropy(complementary, full_mask, seed):
    """E[1{masked}/p] = 1, so averaged over the masking the loss is the mean cross-entropy per response token
    (logits fixed here, so the model's dependence on the noisy input is out of the picture). With complementary
    masking each copy's mask is unbiased for its own p, so the two-copy batch has the same expectation; fully
    masked rows (p = 1) give their mean cross-entropy exactly."""
    ids, response, logits = _case()
    copies = 2 if complementary else 1
    ids_j, resp_j, logits_j = (jnp.asarray(np.concatenate([a] * copies)) for a in (ids, response, logits))

    def one(key):
        _, masked, p = diffusion_noise(key, ids_j, resp_j, MASK_ID, complementary=complementary,
                                       full_mask=full_mask)
        return diffusion_loss(logits_j, ids_j, masked, p, resp_j)

    losses = np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(seed), 40000)))
    ce = _np_ce(logits, ids)
    want = np.mean([ce[i][response[i] == 1].mean() for i in range(len(ids))])
    sem = losses.std() / np.sqrt(losses.size)
    assert abs(losses.mean() - want) < 4 * sem, (losses.mean(), want, sem)
    assert sem < 0.02 * want  # the check above is tight: the Monte Carlo error is under 2 %


def test_complementary_masking_targets_every_response_token_once():
    ids, response, _ = _case(b=4)
    ids2, resp2 = np.concatenate([ids, ids]), np.concatenate([response, response])
    noisy, masked, p = (np.asarray(a) for a in diffusion_noise(jax.random.key(5), jnp.asarray(ids2),
                                                                jnp.asarray(resp2), MASK_ID, complementary=True))
    first, second = masked[:4], masked[4:]
    np.testing.assert_array_equal(first ^ second, response.astype(bool))  # each response token in exactly one copy
    assert not (first & second).any()
    np.testing.assert_array_equal(noisy, np.where(masked, MASK_ID, ids2))
    np.testing.assert_allclose(p[:4] + p[4:], 1.0, atol=1e-6)
    assert MASK_EPS <= p.min() and p.max() <= 1 - MASK_EPS + 1e-7
    t = np.sort((p[:4] - MASK_EPS) / (1 - 2 * MASK_EPS))
    np.testing.assert_allclose(np.diff(t), 1 / 4, atol=1e-5)


def test_complementary_masking_needs_an_even_batch():
    ids, response, _ = _case(b=3)
    with pytest.raises(ValueError, match="even batch"):
        diffusion_noise(jax.random.key(0), jnp.asarray(ids), jnp.asarray(response), MASK_ID, complementary=True)


def test_full_mask_masks_every_response_token_of_the_last_rows():
    ids, response, _ = _case(b=8)
    noisy, masked, p = (np.asarray(a) for a in diffusion_noise(jax.random.key(4), jnp.asarray(ids),
                                                                jnp.asarray(response), MASK_ID, full_mask=0.25))
    np.testing.assert_array_equal(masked[6:], response[6:].astype(bool))  # round(0.25 · 8) = 2 rows at t = 1
    np.testing.assert_array_equal(p[6:], 1.0)
    assert not masked[response == 0].any()
    np.testing.assert_array_equal(noisy, np.where(masked, MASK_ID, ids))
    t = np.sort((p[:6] - MASK_EPS) / (1 - MASK_EPS))  # the other six: stratified over [0, 1) as before
    np.testing.assert_allclose(np.diff(t), 1 / 6, atol=1e-5)
    assert 0 <= t[0] < 1 / 6
    _, masked, p = (np.asarray(a) for a in diffusion_noise(jax.random.key(4), jnp.asarray(ids), jnp.asarray(response),
                                                            MASK_ID, full_mask=1.0))
    np.testing.assert_array_equal(masked, response.astype(bool))  # F = 1: the first denoising step only
    np.testing.assert_array_equal(p, 1.0)


@pytest.mark.parametrize("kwargs, match", [({"full_mask": 1.5}, "fraction"), ({"full_mask": -0.1}, "fraction"),
                                           ({"full_mask": 0.5, "complementary": True}, "complementary")])
def test_full_mask_rejects_bad_settings(kwargs, match):
    ids, response, _ = _case(b=4)
    with pytest.raises(ValueError, match=match):
        diffusion_noise(jax.random.key(0), jnp.asarray(ids), jnp.asarray(response), MASK_ID, **kwargs)


@pytest.mark.parametrize("argv, message", [
    (["--family", "llava", "--full-mask", "0.5"], "--full-mask is a fraction"),
    (["--family", "llada_v", "--full-mask", "0.5", "--complementary"], "--full-mask is a fraction"),
    (["--family", "llada_v", "--full-mask", "2"], "--full-mask is a fraction"),
    (["--family", "llava", "--complementary"], "--complementary is for"),
    (["--family", "llada_v", "--kinds", "location,colours"], "--kinds 'location,colours'"),
    (["--family", "llava", "--kinds", ","], "--kinds ','"),
    (["--family", "llada_v", "--kind-weights", "location=2,size=1"], "'size' is unknown"),
    (["--family", "llada_v", "--kinds", "location", "--kind-weights", "position=1"], "outside --kinds"),
    (["--family", "llada_v", "--kind-weights", "location=-1"], "weight ≥ 0"),
    (["--family", "llada_v", "--kind-weights", "location"], "not KIND=WEIGHT"),
    (["--family", "llada_v", "--kind-weights", "location=0,count=0"], "at least one weight"),
])
def test_cli_rejects_masking_options_that_do_not_apply(argv, message, tmp_path, capsys):
    from vtp_jax.training.testbed.cli import main

    assert main(argv + ["--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written


def _kind_and_answer(scene, question):
    """(kind, answer) of a templated question, derived from the scene description alone."""
    import re

    from vtp_jax.testbed import shapes

    objs = scene.objects
    if m := re.fullmatch(r"What shape is in the (.+)\?", question):
        cell = next(c for c in np.ndindex(3, 3) if shapes.place_name(c) == m[1])
        return "location", next(o.shape for o in objs if o.cell == cell)
    if m := re.fullmatch(r"Is the (\w+) (\w+) left of the (\w+) (\w+)\?", question):
        a = next(o for o in objs if (o.colour, o.shape) == (m[1], m[2]))
        b = next(o for o in objs if (o.colour, o.shape) == (m[3], m[4]))
        return "position", "yes" if a.cell[1] < b.cell[1] else "no"
    if m := re.fullmatch(r"What colour is the (\w+)\?", question):
        return "colour", next(o.colour for o in objs if o.shape == m[1])
    if m := re.fullmatch(r"How many (\w+)s are there\?", question):
        return "count", str(sum(o.shape == m[1] for o in objs))
    if m := re.fullmatch(r"Is there a (\w+) (\w+)\?", question):
        return "presence", "yes" if any((o.colour, o.shape) == (m[1], m[2]) for o in objs) else "no"
    raise AssertionError(question)


@pytest.mark.parametrize("kinds", [("location",), ("location", "position"), ("colour", "count")])
def test_conversations_hold_only_the_requested_kinds_with_correct_answers(kinds):
    from vtp_jax.testbed import shapes
    from vtp_jax.training.testbed import make_conversation

    rng = np.random.default_rng(0)
    seen = set()
    for i in range(40):
        ex = shapes.make_example("train", i, 0, size=24)
        conv = make_conversation(ex, rng, max_turns=3, describe=0.0, kinds=kinds)
        assert 1 <= len(conv.turns) <= 3 and conv.image is ex.image
        assert len({q for q, _ in conv.turns}) == len(conv.turns)  # distinct questions
        for q, a in conv.turns:  # every turn of an allowed kind, its answer re-derived from the scene
            kind = _kind_and_answer(ex.scene, q)
            assert kind[0] in kinds and kind[1] == a, (q, a, kind)
            seen.add(kind[0])
        if ex.kind in kinds:  # the example's own question stays first
            assert conv.turns[0] == (ex.question, ex.answer)
    assert seen == set(kinds)


def test_conversations_of_a_kind_the_scene_cannot_ask_are_none():
    """--kinds position: a scene without two uniquely described objects in different columns has no position
    question, so make_conversation gives None (the training stream skips it) instead of failing."""
    from vtp_jax.testbed import shapes
    from vtp_jax.training.testbed import make_conversation

    rng = np.random.default_rng(0)
    outcomes = set()
    for i in range(60):
        ex = shapes.make_example("train", i, 0, size=24)
        objs = ex.scene.objects
        names = [f"{o.colour} {o.shape}" for o in objs]
        unique = [o for o, n in zip(objs, names) if names.count(n) == 1]
        askable = any(a.cell[1] != b.cell[1] for a in unique for b in unique)
        conv = make_conversation(ex, rng, max_turns=1, describe=0.0, kinds=("position",))
        assert (conv is not None) == askable, (names, [o.cell for o in objs])
        if conv is not None:
            (q, a), = conv.turns
            assert _kind_and_answer(ex.scene, q) == ("position", a)
        outcomes.add(askable)
    assert outcomes == {True, False}  # both cases occur in the sample


def test_first_kind_sets_the_first_question_and_kind_weights_parse():
    from vtp_jax.testbed import shapes
    from vtp_jax.training.testbed import make_conversation
    from vtp_jax.training.testbed.cli import parse_kind_weights

    rng = np.random.default_rng(1)
    for first_kind in ("position", "colour"):
        made = 0
        for i in range(40):
            ex = shapes.make_example("train", i, 0, size=24)
            conv = make_conversation(ex, rng, max_turns=3, describe=0.0, first_kind=first_kind)
            # whether a colour / position question exists does not depend on the draw (make_questions' docstring)
            askable = first_kind in {qa.kind for qa in shapes.make_questions(ex.scene, np.random.default_rng(i))}
            assert (conv is not None) == askable
            if conv is None:
                continue
            made += 1
            kinds = [_kind_and_answer(ex.scene, q) for q, _ in conv.turns]
            assert kinds[0][0] == first_kind
            assert [k[1] for k in kinds] == [a for _, a in conv.turns]  # answers re-derived from the scene
            if ex.kind == first_kind:
                assert conv.turns[0] == (ex.question, ex.answer)
        assert made >= 20
    assert parse_kind_weights("location=2, position=2,colour=0.5,count=0") == {
        "location": 2.0, "position": 2.0, "colour": 0.5}  # zero weights dropped


def test_conversations_reject_unknown_kinds():
    from vtp_jax.testbed import shapes
    from vtp_jax.training.testbed import TrainError, make_conversation

    with pytest.raises(TrainError, match="unknown question kinds"):
        make_conversation(shapes.make_example("train", 0, 0, size=24), np.random.default_rng(0), 2, 0.0, ("size",))


@pytest.mark.parametrize("family", ["llava", "llada_v"])
def test_tokenizer_retrain_reproduces_the_builder_and_touches_no_globals(family):
    """train_shapes_tokenizer retrains the builder's tokenizer on an explicit corpus: retrained on the builder's own
    corpus it is the builder's tokenizer (so the retrain repeats the builder's BPE settings), and no builder module
    attribute is replaced on the way (the old trainer patched ``_corpus``)."""
    from vtp_jax.testbed import hf_llada_v, hf_llava
    from vtp_jax.training.testbed import builders, corpus

    before = (hf_llava._corpus, hf_llada_v._corpus, dict(vars(hf_llava)), dict(vars(hf_llada_v)))
    builder = builders.testbed_builder(family)
    base = builder.base_tokenizer(300)
    again = corpus.retrain_tokenizer(base, builder.builtin_corpus(), 300)
    assert again.backend_tokenizer.to_str() == base.backend_tokenizer.to_str()
    shapes_tok = corpus.train_shapes_tokenizer(family)
    assert len(shapes_tok) == 512 and shapes_tok.backend_tokenizer.to_str() != base.backend_tokenizer.to_str()
    assert (hf_llava._corpus, hf_llada_v._corpus, dict(vars(hf_llava)), dict(vars(hf_llada_v))) == before


def test_training_layers():
    """Imports point down: ``vtp_jax.pruning`` loads no generation / testbed / training code, ``convert`` loads no
    training code, and of the testbed trainer only its CLI imports ``convert``; no training module tests a family's
    name (the registry's kind and the per-family builder table decide)."""
    import pathlib
    import re
    import subprocess
    import sys

    head = "import sys\ndef loaded(*prefixes): return sorted(m for m in sys.modules if m.startswith(prefixes))\n"
    probes = (
        "import vtp_jax.pruning\n"
        "assert not loaded('vtp_jax.generation', 'vtp_jax.testbed', 'vtp_jax.training'), loaded('vtp_jax.')\n"
        "import convert\n"
        "assert not loaded('vtp_jax.training'), loaded('vtp_jax.training')\n",
        "import vtp_jax.training.testbed, vtp_jax.training.dyrate\n"
        "assert not loaded('convert'), 'the training library (all but its CLI) imports convert'\n",
    )
    for probe in probes:
        done = subprocess.run([sys.executable, "-c", head + probe], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    root = pathlib.Path(__file__).resolve().parents[1] / "vtp_jax" / "training"
    for path in root.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"family\s*[!=]=", text), path
        if path.name != "cli.py":
            assert not re.search(r"^\s*(from convert|import convert)", text, re.M), path
