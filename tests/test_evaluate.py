"""``vtp-eval`` (eval.evaluate, eval.tasks) on tiny random-weight checkpoints: single runs (unpruned + pruned,
retention), a sweep, the output files, the shapes task through a stand-in generator, and bad input (exit code 2,
the JSONL line named, no traceback). Accuracies of random weights are meaningless; only their form is checked."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import types
from typing import Any, NamedTuple

import numpy as np
import pytest
from PIL import Image

from eval import evaluate, tasks

LLAVA_SIZES = dict(image_size=32, patch_size=16, vision_hidden=32, vision_layers=1, vision_heads=4, vision_mlp=64,
                   text_hidden=32, text_layers=2, text_heads=4, text_kv_heads=4, text_mlp=64, vocab_size=300,
                   max_position_embeddings=256)  # 4 visual tokens, 2 decoder layers (FastV layer K = 1)
LLADA_SIZES = dict(image_size=32, patch_size=8, vision_hidden=32, vision_layers=1, vision_heads=4, vision_mlp=64,
                   text_hidden=32, text_layers=2, text_heads=4, text_kv_heads=4, text_mlp=64, vocab_size=320,
                   max_position_embeddings=256, max_grid=2, max_num_patches=4)
AR_FAST = ["--max-new-tokens", "4", "--no-progress"]
DIFF_FAST = ["--gen-length", "4", "--steps", "2", "--no-progress"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# 3 records, short questions (one 64-token bucket, one batch): exact match, yes/no, VQA with 10 answers.
RECORDS = [
    {"image": "img/0.png", "question": "What colour?", "answer": "red", "metric": "exact_match", "id": "r0"},
    {"image": "img/1.png", "question": "Is it round?", "answer": "yes", "metric": "yes_no", "id": "r1"},
    {"image": "img/2.png", "question": "How many?", "answers": ["2"] * 4 + ["3"] * 6, "metric": "vqa", "id": "r2"},
]


def _write_jsonl(path, records) -> str:
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("task")
    (root / "img").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
    _write_jsonl(root / "task.jsonl", RECORDS)
    return root


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    from convert import convert
    from vtp_jax.testbed.hf_llava import build_tiny_llava

    root = tmp_path_factory.mktemp("eval_llava")
    return convert(build_tiny_llava(str(root / "hf"), **LLAVA_SIZES), str(root / "jax"), progress=False)


@pytest.fixture(scope="module")
def llada_dir(tmp_path_factory):
    from convert import convert
    from vtp_jax.testbed.hf_llada_v import build_tiny_llada_v

    root = tmp_path_factory.mktemp("eval_llada")
    return convert(build_tiny_llada_v(str(root / "hf"), **LLADA_SIZES), str(root / "jax"), progress=False)


def run_eval(capsys, *argv):
    code = evaluate.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _csv_rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _check_files(out_dir) -> dict:
    for name in evaluate.RESULT_FILES:
        assert os.path.getsize(os.path.join(out_dir, name)) > 0, name
    with open(os.path.join(out_dir, "accuracy_vs_keep.png"), "rb") as fh:
        assert fh.read(8) == PNG_MAGIC
    with open(os.path.join(out_dir, "results.json"), encoding="utf-8") as fh:
        return json.load(fh)


def _check_row(row, n):
    assert 0.0 <= row["accuracy"] <= 1.0
    assert row["n"] == n and row["latency_s"] > 0 and row["tokens_per_s"] > 0 and row["compile_s"] > 0
    assert 0.0 < row["kept_fraction"] <= 1.0


# ---- LLaVA ---------------------------------------------------------------------------------------------------

def test_single_run_fastv_retention_and_files(llava_dir, task_dir, tmp_path, capsys):
    out_dir, json_path = tmp_path / "out", tmp_path / "r.json"
    code, out, err = run_eval(capsys, "--model", llava_dir, "--task", f"jsonl:{task_dir / 'task.jsonl'}",
                              "--method", "fastv", "--keep-ratio", "0.5", "--layer", "1", *AR_FAST,
                              "--out", out_dir, "--json", json_path)
    assert code == 0, err
    assert "RANDOM weights" in out and "retention" in out
    res = _check_files(out_dir)
    with open(json_path, encoding="utf-8") as fh:
        assert json.load(fh) == res
    assert res["random_weights"] is True and res["family"] == "llava" and res["records"] == 3
    assert any("RANDOM weights" in n for n in res["notes"])
    base, pruned = res["rows"]
    assert (base["method"], pruned["method"]) == ("none", "fastv")
    for row in res["rows"]:
        _check_row(row, 3)
    assert base["keep"] == 4 and base["kept_fraction"] == 1.0 and base["retention"] is None
    assert pruned["keep"] == 2 and pruned["kept_fraction"] == 0.5 and pruned["keep_ratio"] == 0.5
    # POPE reads any answer without "no"/"not" as "yes": the yes/no record makes the unpruned accuracy > 0
    assert base["accuracy"] > 0
    assert pruned["retention"] == pytest.approx(pruned["accuracy"] / base["accuracy"])
    assert set(base["by_metric"]) == {"exact_match", "yes_no", "vqa"} and "f1" in base["by_metric"]["yes_no"]
    preds = res["predictions"]
    assert set(preds) == {"none", "fastv keep=0.5"}
    for run in preds.values():
        assert [p["id"] for p in run] == ["r0", "r1", "r2"]
        assert all(isinstance(p["prediction"], str) and 0.0 <= p["score"] <= 1.0 for p in run)
    rows = _csv_rows(out_dir / "results.csv")
    assert [r["method"] for r in rows] == ["none", "fastv"]
    assert float(rows[1]["retention"]) == pytest.approx(pruned["retention"]) and rows[0]["retention"] == ""
    assert res["settings"]["max_new_tokens"] == 4


def test_sweep_two_ratios(llava_dir, task_dir, tmp_path, capsys):
    out_dir = tmp_path / "sweep"
    code, out, err = run_eval(capsys, "--model", llava_dir, "--task", f"jsonl:{task_dir / 'task.jsonl'}",
                              "--sweep", "--methods", "fastv,redvtp", "--ratios", "1.0,0.5", "--layer", "1",
                              "--limit", "2", "--batch-size", "1", "--no-random", *AR_FAST, "--out", out_dir)
    assert code == 0, err
    res = _check_files(out_dir)
    assert res["records"] == 2
    assert [(r["method"], r["keep_ratio"], r["keep"]) for r in res["rows"]] == [
        ("none", 1.0, 4), ("fastv", 1.0, 4), ("fastv", 0.5, 2)]
    for row in res["rows"]:
        _check_row(row, 2)
        assert row["batch_latency_s"] == pytest.approx(row["latency_s"])  # --batch-size 1
    assert [s["method"] for s in res["skipped"]] == ["redvtp"]
    assert "does not apply to llava" in res["skipped"][0]["reason"]
    assert "skipped redvtp" in out
    rows = _csv_rows(out_dir / "results.csv")
    assert [(r["method"], float(r["keep_ratio"])) for r in rows] == [("none", 1.0), ("fastv", 1.0), ("fastv", 0.5)]
    assert tuple(rows[0]) == evaluate.CSV_COLUMNS
    # keep ratio 1.0 keeps every token: FastV then changes nothing (greedy), so it scores like the baseline
    assert res["rows"][1]["accuracy"] == res["rows"][0]["accuracy"]


@pytest.mark.parametrize(
    "lines,needle",
    [
        ([RECORDS[0], {k: v for k, v in RECORDS[1].items() if k != "question"}],
         "task.jsonl:2: missing key 'question'"),
        ([RECORDS[0], RECORDS[1], {**RECORDS[2], "image": "img/nope.png"}], "task.jsonl:3: image not found"),
        (["{not json"], "task.jsonl:1: invalid JSON"),
        ([{**RECORDS[0], "metric": "bleu"}], "task.jsonl:1: unknown metric 'bleu'"),
        ([RECORDS[0], "", {**RECORDS[1], "answer": "maybe"}], "task.jsonl:3: a yes/no gold answer must be"),
        ([{**RECORDS[0], "answers": ["red"]}], "task.jsonl:1: give exactly one of 'answer'"),
        ([{**RECORDS[0], "metric": "multiple_choice"}], "task.jsonl:1: metric 'multiple_choice' needs 'choices'"),
        ([{**RECORDS[0], "metric": "multiple_choice", "choices": ["blue", "green"]}], "task.jsonl:1: the answer 'red'"),
        ([RECORDS[0], RECORDS[0]], "task.jsonl:2: duplicate id 'r0' (first on line 1)"),
        ([], "holds no records"),
    ],
)
def test_bad_jsonl_exits_2_with_the_line(task_dir, tmp_path, capsys, lines, needle):
    os.symlink(task_dir / "img", tmp_path / "img")
    path = _write_jsonl(tmp_path / "task.jsonl", lines)
    code, out, err = run_eval(capsys, "--model", "/nonexistent/model", "--task", f"jsonl:{path}", *AR_FAST)
    assert code == 2
    assert needle in err, err
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--method", "redvtp"], "pruning method 'redvtp' (stage during_generation) does not apply to llava"),
        (["--method", "nosuch"], "unknown pruning method 'nosuch'"),
        (["--method", "fastv", "--keep", "9"], "keep must be between 1 and the number of visual tokens (4)"),
        (["--method", "fastv", "--layer", "2"], "layer K must be in [1, 1]"),
        (["--keep", "2"], "--keep / --keep-ratio need a pruning --method"),
        (["--method", "dyrate"], "DyRate needs a trained predictor: pass --predictor PATH"),
        (["--method", "dyrate", "--keep", "2"], "pruning method 'dyrate' takes no --keep / --keep-ratio"),
        (["--method", "todre-relevance", "--keep-ratio", "0.5"], "takes no --keep / --keep-ratio"),
        (["--method", "dyrate", "--predictor", "FILE"], "is not a vtp-train-dyrate file"),
        (["--method", "fastv", "--predictor", "FILE"], "does not take option(s) predictor"),
        (["--method", "todre+nosuch"], "unknown pruning method 'nosuch'"),
        (["--gen-length", "8"], "--gen-length only apply to diffusion (llada_v) checkpoints"),
        (["--sweep", "--out", "OUT", "--ratios", "1.5"], "keep ratios must be in (0, 1]"),
        (["--sweep", "--out", "OUT", "--methods", "fastv,nosuch"], "unknown pruning method(s) 'nosuch'"),
        (["--sweep"], "--sweep needs --out DIR"),
        (["--ratios", "0.5"], "only apply with --sweep"),
        (["--max-new-tokens", "250"], "exceeds the model's 256 positions"),
        (["--batch-size", "0"], "argument --batch-size: must be ≥ 1, got 0"),
        (["--task", "nosuch"], "unknown task 'nosuch'"),
        (["--task", "jsonl:/nonexistent.jsonl"], "task file not found: /nonexistent.jsonl"),
        (["--model", "/nonexistent/model"], "/nonexistent/model"),
        (["--json", "/nonexistent/dir/r.json"], "--json: folder /nonexistent/dir does not exist"),
        (["--out", "FILE"], "exists and is not a folder"),
    ],
)
def test_bad_input_exits_2(llava_dir, task_dir, tmp_path, capsys, extra, needle):
    args = {"--model": llava_dir, "--task": f"jsonl:{task_dir / 'task.jsonl'}"}
    flags = []
    it = iter(extra)
    for a in it:
        if a in args:
            args[a] = next(it)
        else:
            flags.append({"OUT": str(tmp_path / "out"), "FILE": str(task_dir / "task.jsonl")}.get(a, a))
    code, out, err = run_eval(capsys, *[x for kv in args.items() for x in kv], *flags, "--no-progress")
    assert code == 2
    assert needle in err, err
    assert "Traceback" not in err and out == ""


def test_module_entry_point_no_traceback(task_dir):
    res = subprocess.run([sys.executable, "-m", "eval.evaluate", "--model", "/nope", "--task",
                          f"jsonl:{task_dir / 'missing.jsonl'}"], capture_output=True, text=True)
    assert res.returncode == 2 and res.stdout == ""
    assert "vtp-eval: error: task file not found" in res.stderr and "Traceback" not in res.stderr


# ---- tasks ---------------------------------------------------------------------------------------------------

def test_load_jsonl_records(task_dir, tmp_path):
    recs = tasks.load_task(f"jsonl:{task_dir / 'task.jsonl'}")
    assert [r.id for r in recs] == ["r0", "r1", "r2"]
    assert recs[0].image_path == str(task_dir / "img" / "0.png") and recs[0].answers == ["red"]
    assert recs[2].metric == "vqa" and len(recs[2].answers) == 10
    assert recs[0].load_image().mode == "RGB"
    assert tasks.load_task(f"jsonl:{task_dir / 'task.jsonl'}", n=2)[-1].id == "r1"

    mc = {"image": str(task_dir / "img" / "0.png"), "question": "Which shape?", "choices": ["circle", "square"],
          "answer": "square", "metric": "multiple_choice", "source": "hand"}
    path = _write_jsonl(tmp_path / "mc.jsonl", [mc])
    (rec,) = tasks.load_jsonl(path)
    assert rec.id == "mc.jsonl:1" and rec.meta == {"source": "hand"}  # default id; extra keys kept
    assert rec.prompt() == f"Which shape?\nA. circle\nB. square\n{tasks.MC_INSTRUCTION}"
    assert rec.prompt("Be brief.").endswith("\nBe brief.")


class _Example(NamedTuple):  # stand-in for vtp_jax.testbed.shapes.Example
    image: Any
    question: str
    answer: str
    kind: str
    scene: Any


def _fake_shapes_module(size=(32, 32)):
    """A module with make_split(split, n, seed) like vtp_jax.testbed.shapes (plain coloured squares)."""
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220)}

    def make_split(split, n, seed):
        if split not in ("train", "val", "test"):
            raise ValueError(f"unknown split {split!r}")
        rng = np.random.default_rng(seed)
        out = []
        for i in range(n):
            name = list(colours)[int(rng.integers(2))]
            img = Image.new("RGB", size, colours[name])
            if i % 2:
                out.append(_Example(img, "Is the square red?", "yes" if name == "red" else "no", "exists", None))
            else:
                out.append(_Example(img, "What colour is the square?", name, "color", None))
        return out

    mod = types.ModuleType("vtp_jax.testbed.shapes")
    mod.make_split = make_split
    return mod


@pytest.fixture
def fake_shapes(monkeypatch):
    monkeypatch.setitem(sys.modules, "vtp_jax.testbed.shapes", _fake_shapes_module())


def test_load_shapes_task(fake_shapes):
    recs = tasks.load_task("shapes", split="val", n=4, seed=3)
    assert len(recs) == 4 and len({r.id for r in recs}) == 4
    assert [r.metric for r in recs] == ["exact_match", "yes_no", "exact_match", "yes_no"]
    assert [r.kind for r in recs] == ["color", "exists", "color", "exists"]
    assert recs[0].image is not None and recs[0].image_path is None
    with pytest.raises(tasks.TaskError, match="unknown split"):
        tasks.load_task("shapes", split="dev", n=2)


def test_load_real_shapes_task():
    shapes = pytest.importorskip("vtp_jax.testbed.shapes")
    recs = tasks.load_task("shapes", split="val", n=6, seed=1)
    exs = shapes.make_split("val", 6, 1)
    assert [r.answers for r in recs] == [[e.answer] for e in exs] and [r.kind for r in recs] == [e.kind for e in exs]
    for r in recs:
        assert r.metric == ("yes_no" if r.answers[0] in ("yes", "no") else "exact_match")
        assert r.load_image().mode == "RGB"


def test_sweep_plan_random_baseline_and_skips(monkeypatch):
    import argparse
    import dataclasses

    from vtp_jax.pruning import METHODS

    @dataclasses.dataclass(frozen=True)
    class FakeRandom:
        keep: int
        seed: int = 0
        name = "random"
        stage = "in_llm"

    monkeypatch.setitem(METHODS, "random", FakeRandom)
    args = argparse.Namespace(methods="fastv,redvtp", no_random=False, layer=1, criterion=None, reindex=None, seed=7)
    run, skipped, notes = evaluate._sweep_plan(args, "llava")
    assert run == ["fastv", "random"] and [s["method"] for s in skipped] == ["redvtp"]
    assert any("'random' method as a baseline" in n for n in notes)
    options, opt_notes = evaluate._method_options(args, "random", strict=False)
    assert options == {"seed": 7} and "ignored option(s) --layer" in opt_notes[0]
    args.no_random = True
    assert evaluate._sweep_plan(args, "llava")[0] == ["fastv"]
    args.methods, args.no_random = None, False  # default: every registered method fitting the family
    assert evaluate._sweep_plan(args, "llada_v")[0] == ["divprune", "llada-fastv", "redvtp", "todre"]
    monkeypatch.setattr(FakeRandom, "stage", "during_generation")  # a stage the llava generator does not run
    run, skipped, _ = evaluate._sweep_plan(args, "llava")
    assert "random" not in run and "random" in [s["method"] for s in skipped]


def test_scores_and_retention():
    recs = [tasks.Record("q", ["yes"], "yes_no", "a", kind="k1"), tasks.Record("q", ["no"], "yes_no", "b", kind="k2"),
            tasks.Record("q", ["2"], "exact_match", "c", kind="k1")]
    scores, s = evaluate.score_predictions(recs, ["Yes.", "yes", "two"])
    assert scores == [1.0, 0.0, 1.0] and s["accuracy"] == pytest.approx(2 / 3) and s["metric"] == "mixed"
    assert s["by_metric"]["yes_no"]["precision"] == 0.5 and s["by_metric"]["yes_no"]["recall"] == 1.0
    assert s["by_kind"] == {"k1": {"n": 2, "accuracy": 1.0}, "k2": {"n": 1, "accuracy": 0.0}}
    assert evaluate.retention(0.3, 0.6) == pytest.approx(0.5) and evaluate.retention(0.3, 0.0) is None
    assert evaluate.parse_ratios("1, 0.5,0.5") == [1.0, 0.5]


# ---- LLaDA-V -------------------------------------------------------------------------------------------------

def test_llada_v_redvtp_on_shapes(llada_dir, fake_shapes, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, out, err = run_eval(capsys, "--model", llada_dir, "--task", "shapes", "--limit", "3", "--method", "redvtp",
                              "--keep-ratio", "0.5", *DIFF_FAST, "--out", out_dir)
    assert code == 0, err
    assert "RANDOM weights" in out
    res = _check_files(out_dir)
    assert res["family"] == "llada_v" and res["random_weights"] is True and res["records"] == 3
    base, pruned = res["rows"]
    assert (base["method"], pruned["method"]) == ("none", "redvtp")
    for row in res["rows"]:
        _check_row(row, 3)
    n_v = base["keep"]
    assert pruned["keep"] == max(1, int(n_v * 0.5))  # RedVTP floors
    assert pruned["retention"] == (pruned["accuracy"] / base["accuracy"] if base["accuracy"] > 0 else None)
    assert set(base["by_kind"]) == {"color", "exists"}
    # diffusion throughput counts decoded positions: gen_length per record
    assert res["settings"]["gen_length"] == 4 and res["settings"]["steps"] == 2
    assert [r["method"] for r in _csv_rows(out_dir / "results.csv")] == ["none", "redvtp"]


def test_llada_v_wrong_family_flags(llada_dir, fake_shapes, capsys):
    for extra, needle in ((["--method", "fastv"], "does not apply to llada_v checkpoints"),
                          (["--max-new-tokens", "4"], "only apply to autoregressive (llava, llava_next, qwen2_5_vl) checkpoints")):
        code, out, err = run_eval(capsys, "--model", llada_dir, "--task", "shapes", "--limit", "2", *extra,
                                  "--no-progress")
        assert code == 2 and needle in err and "Traceback" not in err, err


# ---- methods without a keep count: DyRate, ToDRE stage 2 -------------------------------------------------------

DY_RATES = 4


def _predictor(path, rate: int, heads: int = 4, layer: int = 1) -> str:
    """A DyRate predictor that always picks rate index ``rate``: zero weights, the largest bias at ``rate``."""
    from vtp_jax.pruning.dyrate import RatePredictor

    bias = np.zeros(DY_RATES, np.float32)
    bias[rate] = 1.0
    RatePredictor(np.zeros((heads * 4, DY_RATES), np.float32), bias, layer, {"note": "test"}).save(str(path))
    return str(path)


def test_single_run_dyrate_decode_kv_cut(llava_dir, task_dir, tmp_path, capsys):
    import shutil

    from vtp_jax.pruning import dyrate
    from vtp_jax.pruning.dyrate import PREDICTOR_FILE

    model = shutil.copytree(llava_dir, tmp_path / "model")  # the predictor in the model folder: the default
    _predictor(model / PREDICTOR_FILE, DY_RATES - 1)  # always the highest rate, decided at prefill
    out_dir = tmp_path / "out"
    code, out, err = run_eval(capsys, "--model", model, "--task", f"jsonl:{task_dir / 'task.jsonl'}",
                              "--method", "dyrate", *AR_FAST, "--out", out_dir)
    assert code == 0, err
    res = _check_files(out_dir)
    base, row = res["rows"]
    assert row["method"] == "dyrate" and row["keep_ratio"] is None and set(res["predictions"]) == {"none", "dyrate"}
    _check_row(row, 3)
    assert row["kept_fraction"] == 1.0 and row["keep"] == 4  # the prefill keeps every visual token
    assert base["decode_visual_kv_cut"] is None
    # every decode step attends keep_counts[-1] of the N_v = 4 visual tokens: the cut is exactly that rate's drop
    counts = dyrate.keep_counts(4, DY_RATES)
    assert row["decode_visual_kv_cut"] is not None  # these records generate ≥ 2 tokens (4 at most)
    assert row["decode_visual_kv_cut"] == 1.0 - counts[-1] / 4
    assert 0.0 < row["decode_visual_kv_cut"] < 1.0
    csv_rows = _csv_rows(out_dir / "results.csv")
    assert [r["keep_ratio"] for r in csv_rows] == ["1.0", ""]
    assert csv_rows[0]["decode_visual_kv_cut"] == "" and float(csv_rows[1]["decode_visual_kv_cut"]) == 0.75
    assert "kv_cut" in out and "0.750" in out

    # ToDRE stage 1 then DyRate (a + spec): N_v of the cut is the 2 tokens stage 1 left in the cache. Pivot "norm":
    # this one-layer vision tower has no layer before the feature layer for the class-token attention.
    code, out, err = run_eval(capsys, "--model", model, "--task", f"jsonl:{task_dir / 'task.jsonl'}",
                              "--method", "todre+dyrate", "--keep", "2", "--pivot", "norm", *AR_FAST,
                              "--json", tmp_path / "r.json")
    assert code == 0, err
    with open(tmp_path / "r.json", encoding="utf-8") as fh:
        row = json.load(fh)["rows"][1]
    assert (row["method"], row["keep"], row["kept_fraction"], row["keep_ratio"]) == ("todre+dyrate", 2, 0.5, None)
    assert row["decode_visual_kv_cut"] == 1.0 - dyrate.keep_counts(2, DY_RATES)[-1] / 2


def test_sweep_methods_without_keep_run_once(llava_dir, task_dir, tmp_path, capsys):
    out_dir = tmp_path / "sweep"
    pred = _predictor(tmp_path / "p.safetensors", 1)
    code, out, err = run_eval(capsys, "--model", llava_dir, "--task", f"jsonl:{task_dir / 'task.jsonl'}",
                              "--sweep", "--methods", "fastv,todre-relevance,dyrate", "--ratios", "1.0,0.5",
                              "--layer", "1", "--predictor", pred, "--limit", "2", "--no-random", *AR_FAST,
                              "--out", out_dir)
    assert code == 0, err
    res = _check_files(out_dir)
    assert [(r["method"], r["keep_ratio"]) for r in res["rows"]] == [
        ("none", 1.0), ("fastv", 1.0), ("fastv", 0.5), ("todre-relevance", None), ("dyrate", None)]
    assert set(res["predictions"]) == {"none", "fastv keep=1", "fastv keep=0.5", "todre-relevance", "dyrate"}
    assert res["skipped"] == []
    assert any("fastv: ignored option(s) --predictor" in n for n in res["notes"])
    for row in res["rows"]:
        _check_row(row, 2)
        assert (row["decode_visual_kv_cut"] is not None) == (row["method"] == "dyrate")
    cut = res["rows"][-1]["decode_visual_kv_cut"]  # rate 1 of 4 on 4 visual tokens: 3 kept, a cut of 1/4
    assert cut == 0.25
    rows = _csv_rows(out_dir / "results.csv")
    assert [(r["method"], r["keep_ratio"]) for r in rows] == [
        ("none", "1.0"), ("fastv", "1.0"), ("fastv", "0.5"), ("todre-relevance", ""), ("dyrate", "")]
    assert "todre-relevance" in out and "dyrate" in out


def test_sweep_plan_dyrate_needs_a_predictor(tmp_path):
    import argparse

    from vtp_jax.pruning.dyrate import PREDICTOR_FILE

    args = argparse.Namespace(methods=None, no_random=True, model=str(tmp_path), predictor=None, layer=None,
                              criterion=None, reindex=None, tau=0.2, pivot=None, cls_layer=3, seed=0)
    run, skipped, _ = evaluate._sweep_plan(args, "llava")
    assert "dyrate" not in run and "todre-relevance" in run and "fastv" in run
    (reason,) = [s["reason"] for s in skipped if s["method"] == "dyrate"]
    assert "DyRate needs a trained predictor" in reason
    assert evaluate._method_options(args, "dyrate", strict=False)[0] == {}

    default = _predictor(tmp_path / PREDICTOR_FILE, 0)  # the model folder's predictor is the default
    run, skipped, _ = evaluate._sweep_plan(args, "llava")
    assert "dyrate" in run and "dyrate" not in [s["method"] for s in skipped]
    assert evaluate._method_options(args, "dyrate", strict=False)[0] == {"predictor": default}
    args.predictor = "/elsewhere/p.safetensors"  # --predictor wins
    assert evaluate._method_options(args, "dyrate", strict=False)[0] == {"predictor": args.predictor}
    options, notes = evaluate._method_options(args, "fastv", strict=False)
    assert options == {} and "ignored option(s) --cls-layer, --predictor, --tau" in notes[0]
    assert evaluate._method_options(args, "todre+todre-relevance", strict=False)[0] == {"tau": 0.2, "cls_layer": 3}
    assert evaluate._sweep_plan(argparse.Namespace(**{**vars(args), "methods": "todre+dyrate"}), "llada_v")[0] == []

    assert not evaluate.takes_keep("dyrate") and not evaluate.takes_keep("todre-relevance")
    assert evaluate.takes_keep("todre+todre-relevance") and evaluate.takes_keep("fastv")


def test_keep_ratio_used_is_the_one_decision_for_labels_and_methods():
    from vtp_jax.runtime import build_method, keep_ratio_used

    assert keep_ratio_used("fastv") == 0.5 and keep_ratio_used("todre") == 0.1
    assert keep_ratio_used("divprune") == 0.098
    assert keep_ratio_used("todre+todre-relevance") == 0.1  # the keep count goes to stage 1
    assert keep_ratio_used("fastv", keep_ratio=0.25) == 0.25
    assert keep_ratio_used("fastv", keep=7) is None and keep_ratio_used("todre-relevance") is None
    assert keep_ratio_used("none") is None
    # build_method prunes to exactly that ratio (LLaDA-V floors N_v · ratio)
    assert build_method("todre", "llada_v", 78, 3).keep == int(78 * keep_ratio_used("todre"))
