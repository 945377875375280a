"""The prepared GPU check (eval/gpu_check.py) runs end to end on CPU with width-reduced configs (the real run needs a
lent accelerator): every LLaVA variant is timed, MFU and the roofline ratio are finite and in (0, 1), the report
names the random weights; bad flags exit 2."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from eval import gpu_check


def test_gpu_check_llava_part_on_cpu(tmp_path):
    out = tmp_path / "jax.json"
    rc = gpu_check.main(["jax", "--tiny", "--layers", "3", "--runs", "1", "--new-tokens", "3", "--families", "llava",
                         "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["random_weights"] is True and report["backend"] == "cpu"
    llava = report["llava-1.5-7b"]
    for key in ("none@b1", "fastv-25@b1", "todre-25@b1", "none@b8"):
        row = llava[key]
        assert row["prefill_ms"] > 0 and 0 < row["mfu"] < 1 and math.isfinite(row["prefill_flops"])
    assert llava["fastv-25@b1"]["kept_visual"] == round(0.25 * llava["none@b1"]["kept_visual"])
    assert 0 < llava["none@b1"]["decode_vs_roofline"] < 1
    text = gpu_check.format_report(report, None)
    assert "RANDOM weights" in text and "jax fastv-25@b1" in text


@pytest.mark.parametrize("argv", [["jax", "--out", "x.json", "--layers", "0"], ["jax", "--out", "x.json",
                                                                                 "--families", "qwen"]])
def test_gpu_check_bad_flags_exit_2(argv):
    proc = subprocess.run([sys.executable, "-m", "eval.gpu_check", *argv], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
