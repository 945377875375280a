"""Answer metrics for VQA-style evaluation: normalisation, exact match, VQA soft accuracy, yes/no F1, multiple choice.

All functions are pure Python on strings. Every score is a float in [0, 1].

Sources of the definitions (re-implemented here from their descriptions, no code copied):

* Normalisation and soft accuracy — the VQA evaluation (Antol et al., 2015, "VQA: Visual Question Answering";
  Agrawal et al.'s official ``vqaEval.py``, https://visualqa.org/evaluation.html): lowercase, punctuation removed
  (periods kept inside numbers, thousands separators dropped), number words → digits, articles removed;
  ``Acc(ans) = min(#humans that said ans / 3, 1)`` averaged over all 10-choose-9 subsets of the 10 human answers.
* Yes/no — POPE (Li et al., 2023, "Evaluating Object Hallucination in Large Vision-Language Models"; its
  ``evaluate.py``): the prediction's first sentence is read as "no" if it holds the word "no" or "not", else
  "yes"; precision / recall / F1 with "yes" as the positive class, accuracy and the yes-ratio.
* Multiple choice — MMBench (Liu et al., 2023)'s answer matching, as in VLMEvalKit's ``can_infer_option`` /
  ``can_infer_text``: the prediction is matched to an option by its letter ("B", "(B)", "B. …", "the answer is B")
  or, failing that, by the option's text.

Differences from the official VQA script, all deliberate: (1) it normalises only when the ten human answers are not
all identical, this module always normalises (so "two" vs a unanimous "2" scores 1 here, 0 there); (2) apostrophes
are dropped instead of restoring contractions ("don't" → "dont" on both sides, which matches just the same);
(3) number words go up to "twenty" (the script stops at "ten"); (4) fewer than 4 answers fall back to exact match
(see :func:`vqa_soft_accuracy`).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

METRICS = ("exact_match", "vqa", "yes_no", "multiple_choice", "item_f1")

ARTICLES = frozenset({"a", "an", "the"})
# The VQA script maps "none" and zero … ten; extended to twenty.
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13",
    "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17", "eighteen": "18", "nineteen": "19",
    "twenty": "20",
}
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")  # "1,000" → "1000"
_NON_DECIMAL_PERIOD = re.compile(r"\.(?!\d)|(?<!\d)\.")  # periods except the one in "3.5"
_PUNCT = re.compile("[" + re.escape("".join(c for c in string.punctuation if c not in ".'")) + "]")


class MetricError(ValueError):
    """A gold answer a metric cannot use (a yes/no gold that is neither, a choice answer matching no option…)."""


def normalize_answer(text: str) -> str:
    """The VQA-style normal form of an answer, for comparing predictions with gold answers.

    Steps: lowercase; tabs/newlines → spaces; thousands separators between digits dropped ("1,000" → "1000");
    periods removed except between digits ("3.5" stays, "U.S." → "u s"); apostrophes dropped ("don't" → "dont");
    other punctuation → space ("black-and-white" → "black and white"); number words → digits ("Two" → "2",
    "none" → "0"); articles a / an / the removed; whitespace collapsed. ``"The Cat."`` → ``"cat"``.
    """
    t = str(text).lower().replace("\n", " ").replace("\t", " ")
    t = _THOUSANDS.sub("", t)
    t = _NON_DECIMAL_PERIOD.sub(" ", t)
    t = t.replace("'", "").replace("\u2019", "")
    t = _PUNCT.sub(" ", t)
    words = [NUMBER_WORDS.get(w, w) for w in t.split()]
    return " ".join(w for w in words if w not in ARTICLES)


def _as_list(answers: str | Sequence[str]) -> list[str]:
    if isinstance(answers, str):
        return [answers]
    out = list(answers)
    if not out:
        raise MetricError("no gold answers given")
    return out


def exact_match(pred: str, answers: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0.

    pred: the model's answer; answers: one gold answer or a list of accepted ones. Raises MetricError if the
    list is empty.
    """
    p = normalize_answer(pred)
    return float(any(p == normalize_answer(a) for a in _as_list(answers)))


def vqa_soft_accuracy(pred: str, answers: str | Sequence[str]) -> float:
    """VQA accuracy: ``min(#annotators who gave the prediction / 3, 1)``, averaged over the leave-one-out subsets.

    With the standard 10 human answers this is the official score: for each of the 10 subsets of 9 answers the
    prediction gets ``min(matches in the subset / 3, 1)``, and the 10 values are averaged. With k matching
    answers out of 10 that gives 0.3 (k=1), 0.6 (k=2), 0.9 (k=3) and 1.0 (k ≥ 4). The same leave-one-out
    average is used for any list of ≥ 4 answers; with fewer than 4 (full credit would need every other
    annotator to agree) the score falls back to :func:`exact_match`. Answers and prediction are normalised with
    :func:`normalize_answer`. Raises MetricError for an empty list.
    """
    gold = [normalize_answer(a) for a in _as_list(answers)]
    if len(gold) < 4:
        return exact_match(pred, answers)
    p = normalize_answer(pred)
    matches = sum(g == p for g in gold)
    total = 0.0
    for g in gold:  # leave annotator g out
        others = matches - (g == p)
        total += min(others / 3.0, 1.0)
    return total / len(gold)


def parse_yes_no(pred: str) -> str:
    """The POPE reading of a free-form yes/no answer: "no" or "yes".

    Only the first sentence counts (text before the first "."); commas are dropped; if any word is "no" or "not"
    (case-insensitive) the answer is "no", otherwise "yes" — so "Yes, there is." → "yes", "There is not." → "no",
    and an empty answer → "yes" (POPE's rule, kept as is).
    """
    first = str(pred).split(".")[0].replace(",", " ")
    words = {w.strip(string.punctuation).lower() for w in first.split()}
    return "no" if words & {"no", "not"} else "yes"


def gold_yes_no(answer: str) -> str:
    """A gold yes/no answer normalised to "yes" / "no". Raises MetricError for anything else."""
    a = normalize_answer(answer)
    if a not in ("yes", "no"):
        raise MetricError(f"a yes/no gold answer must be 'yes' or 'no', got {answer!r}")
    return a


def yes_no_accuracy(pred: str, answers: str | Sequence[str]) -> float:
    """Per-record yes/no score: 1.0 if :func:`parse_yes_no` of ``pred`` equals the (first) gold answer."""
    return float(parse_yes_no(pred) == gold_yes_no(_as_list(answers)[0]))


def yes_no_f1(preds: Sequence[str], golds: Sequence[str]) -> dict[str, float]:
    """POPE's yes/no metrics over a set of records, "yes" being the positive class.

    preds: free-form model answers (read with :func:`parse_yes_no`); golds: "yes" / "no" (any case/punctuation).
    Returns ``{"f1", "precision", "recall", "accuracy", "yes_ratio", "tp", "fp", "tn", "fn", "n"}``: precision =
    TP / (TP + FP), recall = TP / (TP + FN), F1 their harmonic mean, accuracy = (TP + TN) / n, yes_ratio = share
    of "yes" predictions. A ratio with a zero denominator is 0.0 (no predicted / no gold positives).
    Raises MetricError on a length mismatch, an empty set or a gold that is not yes/no.
    """
    if len(preds) != len(golds):
        raise MetricError(f"{len(preds)} predictions for {len(golds)} gold answers")
    if not preds:
        raise MetricError("yes_no_f1 needs at least one record")
    p = [parse_yes_no(x) == "yes" for x in preds]
    g = [gold_yes_no(x) == "yes" for x in golds]
    tp = sum(a and b for a, b in zip(p, g))
    fp = sum(a and not b for a, b in zip(p, g))
    fn = sum(b and not a for a, b in zip(p, g))
    tn = len(p) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f1": f1, "precision": precision, "recall": recall, "accuracy": (tp + tn) / len(p),
            "yes_ratio": sum(p) / len(p), "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": len(p)}


def option_letters(n: int) -> str:
    """The option letters "A", "B", … of ``n`` choices (at most 26)."""
    return string.ascii_uppercase[:n]


def _letter_index(letter: str, n: int) -> int | None:
    i = string.ascii_uppercase.find(letter.upper())
    return i if 0 <= i < n else None


def parse_choice(pred: str, choices: Sequence[str]) -> int | None:
    """Index of the option a free-form answer picks, or None when it cannot be told.

    In order: (1) the whole answer is a letter ("b", "(B)", "B."); (2) it starts with an upper-case letter and a
    delimiter ("B. blue", "(B) blue", "B: blue"); (3) "answer is B" / "answer: (B)" anywhere; (4) its normalised
    text equals one option's; (5) exactly one option's normalised text occurs in it as whole words (options
    contained in a longer matching option, like "red" in "dark red", do not count). Letters outside the options
    are ignored.
    """
    n = len(choices)
    s = str(pred).strip()
    m = re.fullmatch(r"\(?([A-Za-z])\)?[.:]?", s)
    if m is None:
        m = re.match(r"\(?([A-Z])(?:[).:]|\)\s)", s)
    if m is None:
        m = re.search(r"(?i:answer(?: is)?)\s*:?\s*\(?([A-Z])(?![A-Za-z])", s)
    if m is not None and (i := _letter_index(m.group(1), n)) is not None:
        return i
    p = normalize_answer(s)
    texts = [normalize_answer(c) for c in choices]
    equal = [i for i, t in enumerate(texts) if t and t == p]
    if len(equal) == 1:
        return equal[0]
    found = [i for i, t in enumerate(texts) if t and re.search(r"(?<!\S)" + re.escape(t) + r"(?!\S)", p)]
    found = [i for i in found if not any(j != i and texts[i] != texts[j] and texts[i] in texts[j] for j in found)]
    return found[0] if len(found) == 1 else None


def gold_choice(answer: str, choices: Sequence[str]) -> int:
    """Index of the gold option given as a letter ("B", case-insensitive) or as the option's text.

    Raises MetricError when there are fewer than 2 choices or more than 26, or the answer names no option.
    """
    n = len(choices)
    if not 2 <= n <= 26:
        raise MetricError(f"multiple choice needs 2 to 26 choices, got {n}")
    a = str(answer).strip()
    m = re.fullmatch(r"\(?([A-Za-z])\)?[.:]?", a)
    if m is not None and (i := _letter_index(m.group(1), n)) is not None:
        return i
    texts = [normalize_answer(c) for c in choices]
    hits = [i for i, t in enumerate(texts) if t == normalize_answer(a)]
    if len(hits) != 1:
        raise MetricError(
            f"the answer {answer!r} is neither an option letter ({', '.join(option_letters(n))}) nor the text of "
            "exactly one option"
        )
    return hits[0]


def multiple_choice(pred: str, choices: Sequence[str], answer: str) -> float:
    """1.0 if the answer ``pred`` picks the gold option (see :func:`parse_choice`), else 0.0.

    choices: the option texts, lettered A, B, … in order; answer: the gold option's letter or text.
    Raises MetricError for a gold answer naming no option (see :func:`gold_choice`).
    """
    return float(parse_choice(pred, choices) == gold_choice(answer, choices))


def split_items(text: str) -> list[str]:
    """A list answer ("red circle top left, blue square centre") → its normalised items, split at commas, semicolons
    and " and " (empty items dropped)."""
    parts = re.split(r"[,;]|\band\b", str(text).lower())
    return [n for n in (normalize_answer(p) for p in parts) if n]


def item_f1(pred: str, answers: str | Sequence[str]) -> float:
    """F1 between the item multisets of ``pred`` and of the gold answer (:func:`split_items`); the best over the gold
    answers. 1.0 when both are empty. For list-like answers such as a scene description, where exact match would
    score one wrong item the same as an empty answer."""
    from collections import Counter

    best = 0.0
    p = Counter(split_items(pred))
    for gold in _as_list(answers):
        g = Counter(split_items(gold))
        if not p and not g:
            return 1.0
        tp = sum((p & g).values())
        if tp:
            prec, rec = tp / sum(p.values()), tp / sum(g.values())
            best = max(best, 2 * prec * rec / (prec + rec))
    return best


def score(metric: str, pred: str, answers: Sequence[str], choices: Sequence[str] | None = None) -> float:
    """Per-record score of ``pred`` under ``metric`` (one of :data:`METRICS`); in [0, 1].

    "exact_match" / "vqa" use every gold answer; "yes_no" and "multiple_choice" the first one.
    Raises MetricError for an unknown metric or unusable gold data.
    """
    if metric == "exact_match":
        return exact_match(pred, answers)
    if metric == "vqa":
        return vqa_soft_accuracy(pred, answers)
    if metric == "yes_no":
        return yes_no_accuracy(pred, answers)
    if metric == "item_f1":
        return item_f1(pred, answers)
    if metric == "multiple_choice":
        if not choices:
            raise MetricError("multiple_choice needs choices")
        return multiple_choice(pred, choices, _as_list(answers)[0])
    raise MetricError(f"unknown metric {metric!r} (known: {', '.join(METRICS)})")
