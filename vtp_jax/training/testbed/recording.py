"""Recording a testbed run: the ``vtp_testbed`` record in config.json, the JSON files, the loss-curve plot and
the summaries of evaluation results that go into ``training_log.json``."""

from __future__ import annotations

import json
import os

import numpy as np


def write_json(path: str, obj) -> None:
    """Writes ``obj`` as indented JSON with sorted keys and a final newline (the format of every file written)."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.write("\n")


def read_record(model_dir: str) -> dict:
    """The ``vtp_testbed`` record of a (HF or converted) testbed checkpoint's config.json ({} if none)."""
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as fh:
        return json.load(fh).get("vtp_testbed") or {}


def update_record(hf_dir: str, updates: dict) -> dict:
    """Merges ``updates`` into config.json's ``vtp_testbed`` record; returns the new record."""
    path = os.path.join(hf_dir, "config.json")
    with open(path, encoding="utf-8") as fh:
        config = json.load(fh)
    record = {**(config.get("vtp_testbed") or {}), **updates}
    config["vtp_testbed"] = record
    write_json(path, config)
    return record


def is_testbed_output(path: str) -> bool:
    """Whether ``path`` holds a checkpoint the testbed trainer wrote (config.json with a ``vtp_testbed`` record)."""
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "vtp_testbed" in config


def summary(result: dict) -> dict:
    """An evaluation result (:func:`vtp_jax.training.testbed.evaluation.score`) without its predictions."""
    return {k: v for k, v in result.items() if k != "predictions"}


def per_kind_text(result: dict) -> str:
    """``"colour 0.95, count 0.80, …"``: an evaluation result's accuracy per question kind, for progress lines."""
    return ", ".join(f"{k} {v['accuracy']:.2f}" for k, v in result["per_kind"].items())


def plot_curves(path: str, log: dict) -> None:
    """Loss (raw and smoothed) against steps, validation accuracy on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses = np.asarray(log["loss_steps"]), np.asarray(log["losses"])
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, losses, color="tab:blue", alpha=0.3, lw=0.8, label="train loss")
    if len(losses) >= 20:
        k = max(len(losses) // 50, 5)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, color="tab:blue", lw=1.5, label=f"train loss ({k}-point mean)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    if log["val"]:
        ax2.plot([v["step"] for v in log["val"]], [v["accuracy"] for v in log["val"]], "o-", color="tab:orange",
                 label="val accuracy (greedy generation)")
    ax2.set_ylim(0, 1.02)
    ax2.set_ylabel("val accuracy")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="center right", fontsize=8)
    ax.set_title(f"{log['family']} on shapes VQA — {log['settings']['steps']} steps × {log['settings']['batch']}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
