"""eval.metrics on hand-made cases: normalisation, exact match, VQA soft accuracy, POPE yes/no, multiple choice, item
F1 (list answers); eval.tasks' shapes-describe task."""

from __future__ import annotations

import pytest

from eval import metrics
from eval.metrics import (
    MetricError, exact_match, gold_choice, item_f1, multiple_choice, normalize_answer, parse_choice, parse_yes_no,
    score, split_items, vqa_soft_accuracy, yes_no_f1,
)


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("The Cat.", "cat"),                       # lowercase, article, final period
        ("  A  dog  ", "dog"),                     # article "a", whitespace collapsed
        ("an apple", "apple"),
        ("the", ""),                               # nothing left
        ("Two", "2"),                              # number words → digits
        ("none", "0"),                             # the VQA script maps "none" to 0
        ("twenty one", "20 1"),                    # word by word, no compound numbers
        ("1,000", "1000"),                         # thousands separator
        ("3.5", "3.5"),                            # decimal point kept
        ("3.", "3"),
        ("U.S.", "u s"),                           # other periods → space
        ("yes!", "yes"),
        ("Yes.", "yes"),
        ("black-and-white", "black and white"),    # punctuation → space
        ("don't", "dont"),                         # apostrophes dropped (both sides alike)
        ("dog's", "dogs"),
        ("(b)", "b"),
        ("red,\tblue\nand green", "red blue and green"),
        ("Theater", "theater"),                    # "the" only as a whole word
        ("A", ""),                                 # a lone "A" is an article (letters: see parse_choice)
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_exact_match():
    assert exact_match("The cat.", "cat") == 1.0
    assert exact_match("two", ["2", "3"]) == 1.0
    assert exact_match("2 cats", ["2"]) == 0.0  # exact, not containment
    assert exact_match("", ["the"]) == 1.0  # both normalise to ""
    with pytest.raises(MetricError, match="no gold answers"):
        exact_match("x", [])


def _ten(k: int, ans: str = "cat", other: str = "dog") -> list[str]:
    return [ans] * k + [other] * (10 - k)


def test_vqa_soft_accuracy_ten_answers():
    # k of 10 annotators said the prediction. Official: average over the 10 leave-one-out subsets of
    # min(matches in the 9 others / 3, 1):
    #   the k matching annotators left out  → k − 1 matches remain; the 10 − k others left out → k remain.
    # k = 1: (1 · min(0/3, 1) + 9 · min(1/3, 1)) / 10 = (0 + 3) / 10       = 0.3
    # k = 2: (2 · 1/3 + 8 · 2/3) / 10 = (2/3 + 16/3) / 10 = 6 / 10        = 0.6
    # k = 3: (3 · 2/3 + 7 · 1) / 10 = (2 + 7) / 10                          = 0.9
    # k = 4: (4 · 1 + 6 · 1) / 10                                           = 1.0
    assert vqa_soft_accuracy("cat", _ten(1)) == pytest.approx(0.3)
    assert vqa_soft_accuracy("cat", _ten(2)) == pytest.approx(0.6)
    assert vqa_soft_accuracy("cat", _ten(3)) == pytest.approx(0.9)
    assert vqa_soft_accuracy("cat", _ten(4)) == pytest.approx(1.0)
    assert vqa_soft_accuracy("cat", _ten(10)) == pytest.approx(1.0)
    assert vqa_soft_accuracy("bird", _ten(4)) == 0.0
    # normalised on both sides: "Two" vs 2 annotators' "2" and 1 annotator's "two" → k = 3 → 0.9
    assert vqa_soft_accuracy("Two", ["2", "2", "two"] + ["3"] * 7) == pytest.approx(0.9)


def test_vqa_soft_accuracy_other_lengths():
    # 5 answers, 2 match: 2 · min(1/3, 1) + 3 · min(2/3, 1) = 2/3 + 2 = 8/3; / 5 = 8/15
    assert vqa_soft_accuracy("cat", ["cat", "cat", "dog", "dog", "dog"]) == pytest.approx(8 / 15)
    # fewer than 4 answers: exact match
    assert vqa_soft_accuracy("cat", ["cat"]) == 1.0
    assert vqa_soft_accuracy("cat", ["dog", "Cat."]) == 1.0
    assert vqa_soft_accuracy("cat", "dog") == 0.0


def test_parse_yes_no_pope_rule():
    assert parse_yes_no("Yes") == "yes"
    assert parse_yes_no("Yes, there is a dog in the image.") == "yes"
    assert parse_yes_no("No.") == "no"
    assert parse_yes_no("no, there isn't") == "no"
    assert parse_yes_no("There is not a cat.") == "no"
    assert parse_yes_no("There is a cat. No doubt.") == "yes"  # only the first sentence counts
    assert parse_yes_no("Nothing here") == "yes"  # "nothing" is not the word "no"
    assert parse_yes_no("") == "yes"  # POPE's rule


def test_yes_no_f1_precision_differs_from_recall():
    preds = ["yes", "Yes, it is.", "yes", "no", "no", "No", "yes"]
    golds = ["yes", "yes", "no", "yes", "yes", "no", "no"]
    # pairs: TP, TP, FP, FN, FN, TN, FP → TP = 2, FP = 2, FN = 2, TN = 1: precision = recall = 2/4 (warm-up case)
    r = yes_no_f1(preds, golds)
    assert (r["tp"], r["fp"], r["fn"], r["tn"], r["n"]) == (2, 2, 2, 1, 7)
    assert r["precision"] == pytest.approx(2 / 4) and r["recall"] == pytest.approx(2 / 4)

    # precision ≠ recall:
    preds = ["yes", "yes", "yes", "no", "no"]
    golds = ["yes", "no", "no", "yes", "no"]
    # TP = 1 (row 0), FP = 2 (rows 1, 2), FN = 1 (row 3), TN = 1 (row 4)
    # precision = 1 / 3, recall = 1 / 2, F1 = 2 · (1/3 · 1/2) / (1/3 + 1/2) = (1/3) / (5/6) = 2/5
    # accuracy = (1 + 1) / 5 = 0.4; yes-ratio = 3 / 5
    r = yes_no_f1(preds, golds)
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (1, 2, 1, 1)
    assert r["precision"] == pytest.approx(1 / 3)
    assert r["recall"] == pytest.approx(1 / 2)
    assert r["f1"] == pytest.approx(2 / 5)
    assert r["accuracy"] == pytest.approx(0.4)
    assert r["yes_ratio"] == pytest.approx(0.6)


def test_yes_no_f1_edge_cases():
    r = yes_no_f1(["no", "no"], ["Yes.", "no"])  # no predicted positives → precision 0, F1 0
    assert (r["precision"], r["recall"], r["f1"], r["accuracy"]) == (0.0, 0.0, 0.0, 0.5)
    with pytest.raises(MetricError, match="must be 'yes' or 'no'"):
        yes_no_f1(["yes"], ["maybe"])
    with pytest.raises(MetricError, match="2 predictions for 1"):
        yes_no_f1(["yes", "no"], ["yes"])
    with pytest.raises(MetricError, match="at least one"):
        yes_no_f1([], [])


CHOICES = ["circle", "square", "dark red", "red"]


@pytest.mark.parametrize(
    "pred,expected",
    [
        ("B", 1), ("b", 1), ("(B)", 1), ("B.", 1), ("B. square", 1), ("(C) dark red", 2), ("D: red", 3),
        ("The answer is B.", 1), ("Answer: (A)", 0),
        ("square", 1), ("A square.", 1),            # text; "A" here is an article, not option A
        ("It is a circle", 0),                       # one option's text inside the answer
        ("dark red", 2),                             # "red" inside "dark red" does not count twice
        ("circle or square", None),                  # two options → undecided
        ("E", None),                                 # letter out of range
        ("triangle", None),
    ],
)
def test_parse_choice(pred, expected):
    assert parse_choice(pred, CHOICES) == expected


def test_multiple_choice_gold_by_letter_or_text():
    assert multiple_choice("B", CHOICES, "B") == 1.0
    assert multiple_choice("square", CHOICES, "B") == 1.0
    assert multiple_choice("B", CHOICES, "Square") == 1.0
    assert multiple_choice("A", CHOICES, "square") == 0.0
    assert gold_choice("(c)", CHOICES) == 2
    with pytest.raises(MetricError, match="neither an option letter"):
        gold_choice("triangle", CHOICES)
    with pytest.raises(MetricError, match="2 to 26 choices"):
        gold_choice("A", ["only"])


def test_score_dispatch():
    assert score("exact_match", "Two", ["2"]) == 1.0
    assert score("vqa", "cat", _ten(2)) == pytest.approx(0.6)
    assert score("yes_no", "No, it is not.", ["no"]) == 1.0
    assert score("multiple_choice", "(A)", ["circle"], ["circle", "square"]) == 1.0
    with pytest.raises(MetricError, match="unknown metric"):
        score("bleu", "x", ["y"])
    with pytest.raises(MetricError, match="needs choices"):
        score("multiple_choice", "A", ["A"], None)
    assert score("item_f1", "red circle, blue square", ["red circle"]) == pytest.approx(2 / 3)
    assert set(metrics.METRICS) == {"exact_match", "vqa", "yes_no", "multiple_choice", "item_f1"}


# ---- list answers: split_items / item_f1 -----------------------------------------------------------------------

GOLD = "red circle top left, blue square centre"


@pytest.mark.parametrize(
    "text,items",
    [
        (GOLD, ["red circle top left", "blue square centre"]),
        ("The Red Circle; a blue square.", ["red circle", "blue square"]),  # ";" splits; normalised (articles, case)
        ("red circle and blue square", ["red circle", "blue square"]),       # " and " splits
        ("candle, sand", ["candle", "sand"]),                                # "and" only as a whole word
        ("red circle,, ,blue square,", ["red circle", "blue square"]),       # empty items dropped
        ("two circles", ["2 circles"]),                                      # number words → digits
        ("", []),
        (" , ; and ", []),
    ],
)
def test_split_items(text, items):
    assert split_items(text) == items


def test_item_f1_exact_and_order():
    assert item_f1(GOLD, GOLD) == 1.0
    assert item_f1("blue square centre, red circle top left", GOLD) == 1.0  # a set of items: order does not matter
    assert item_f1("Red circle top left; the blue square centre.", [GOLD]) == 1.0  # normalised like exact match


def test_item_f1_partial():
    # one of two items right and one wrong: precision 1/2, recall 1/2 → F1 1/2
    assert item_f1("red circle top left, green triangle centre", GOLD) == pytest.approx(0.5)
    # one of two items, nothing wrong: precision 1, recall 1/2 → F1 2 · (1 · 1/2) / (3/2) = 2/3
    assert item_f1("red circle top left", GOLD) == pytest.approx(2 / 3)
    # three items, both gold items among them: precision 2/3, recall 1 → F1 (4/3) / (5/3) = 4/5
    assert item_f1(GOLD + ", green triangle bottom", GOLD) == pytest.approx(4 / 5)
    # multisets: a repeated item counts once against a gold that has it once: precision 1/2, recall 1 → 2/3
    assert item_f1("red circle, red circle", "red circle") == pytest.approx(2 / 3)
    # an item is matched whole: a near miss scores nothing
    assert item_f1("red circle top right, blue square centre left", GOLD) == 0.0


def test_item_f1_empty():
    assert item_f1("", "") == 1.0  # nothing listed on either side
    assert item_f1("", GOLD) == 0.0
    assert item_f1(GOLD, "") == 0.0
    assert item_f1("the, a", "") == 1.0  # only articles: no items
    with pytest.raises(MetricError, match="no gold answers"):
        item_f1(GOLD, [])


def test_item_f1_multiple_gold_answers():
    golds = ["green triangle bottom", GOLD]
    assert item_f1("red circle top left", golds) == pytest.approx(2 / 3)  # the best over the gold answers
    assert item_f1("green triangle bottom", golds) == 1.0
    assert item_f1("", ["", GOLD]) == 1.0
    assert item_f1("yellow star", golds) == 0.0


# ---- the shapes-describe task ----------------------------------------------------------------------------------

def test_load_shapes_describe_task():
    shapes = pytest.importorskip("vtp_jax.testbed.shapes")
    from eval import tasks

    recs = tasks.load_task("shapes-describe", n=3)
    exs = shapes.make_split("test", 3, 0)  # load_task's defaults: split "test", seed 0
    assert len(recs) == 3 and len({r.id for r in recs}) == 3
    for r, ex in zip(recs, exs):
        assert r.question == shapes.DESCRIBE and r.prompt() == shapes.DESCRIBE
        assert r.metric == "item_f1" and r.kind == "describe"
        assert r.answers == [shapes.describe(ex.scene)]
        assert r.load_image().mode == "RGB" and r.image_path is None
        assert score(r.metric, r.answers[0], r.answers) == 1.0
        assert len(split_items(r.answers[0])) == len(ex.scene.objects)  # one item per object
