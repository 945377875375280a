"""Report helpers shared by every section of ``vtp-bench``: statistics of timed runs, ratios, number formatting,
the plain-text table and the lines about background load. The per-family tables are built from these by
:func:`eval.bench.autoregressive.format_llava` and :func:`eval.bench.diffusion.format_llada_v`.
"""

from __future__ import annotations

import statistics

import numpy as np

from eval.bench.load import FOREIGN_LOAD_WARN
from eval.bench.methods import keep_label

RANDOM_WEIGHTS_NOTE = "RANDOM WEIGHTS: speed only, the generated text is meaningless"
RUNS_BUSY_WARNING = ("WARNING: other processes competed for the CPUs during the timed runs; the timings (torch's "
                     "above all) are not representative of an idle machine and PASS / MISS is unreliable")
UNRELIABLE_MARK = " (unreliable: CPUs shared with other processes)"  # after a PASS / MISS under load


def median(xs: list[float]) -> float:
    """Median of ``xs`` as a float (seconds, tokens/s, ... — whatever the runs measured)."""
    return float(statistics.median(xs))


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b ≤ 0."""
    return a / b if (a is not None and b is not None and b > 0) else None


def percent(x: float | None) -> float | None:
    """A share in [0, 1] → percent (None stays None)."""
    return None if x is None else 100.0 * x


def fmt(x: float | None, spec: str, suffix: str = "") -> str:
    """``format(x, spec) + suffix``, or "n/a" for None."""
    return "n/a" if x is None else format(x, spec) + suffix


def fmt_gain(x: float | None) -> str:
    """A relative gain (0.5 = +50 %) → "+50%"; "n/a" for None."""
    return "n/a" if x is None else f"{100 * x:+.0f}%"


def fmt_keep(pct: float | None) -> str:
    """A keep percentage → its label (50.0 → "50"); "—" for a method without a keep count."""
    return "—" if pct is None else keep_label(pct)


def text_table(cols: list[tuple[str, int, str]], rows: list[list]) -> list[str]:
    """Header, rule and rows; ``cols`` = (title, width, "<" | ">"); width 0 = as wide as needed (last column)."""
    def line(cells):
        return "".join(format(str(c), f"{align}{w}") if w else " " + str(c)
                       for c, (_, w, align) in zip(cells, cols)).rstrip()

    header = line([t for t, _, _ in cols])
    return [header, "-" * len(header)] + [line(r) for r in rows]


def greedy_agreement(a: np.ndarray | None, b: np.ndarray | None) -> int | None:
    """Leading positions where two greedy outputs [B, G] agree in every row (G = all of them); None when either is
    missing."""
    if a is None or b is None:
        return None
    same = (a == b).all(axis=0)
    return int(same.size) if same.all() else int(np.argmin(same))


def cpu_share_line(env: dict) -> str:
    """The report line with other processes' CPU share (percent) before and during the timed runs and the 1-minute
    load average at the start and end of a section (``env`` as the sections record it)."""
    return (f"CPU share used by other processes: {fmt(percent(env.get('foreign_cpu_share_before')), '.0f', ' %')} "
            f"just before, {fmt(percent(env.get('foreign_cpu_share_during_runs')), '.0f', ' %')} during the timed "
            f"runs (1-min load average {fmt(env.get('loadavg_start'), '.2f')} → {fmt(env.get('loadavg_end'), '.2f')})")


def busy_during_runs(env: dict) -> bool:
    """Whether other processes took more than :data:`~eval.bench.load.FOREIGN_LOAD_WARN` of the CPUs during a
    section's timed runs (then :data:`RUNS_BUSY_WARNING` is printed)."""
    return (env.get("foreign_cpu_share_during_runs") or 0.0) > FOREIGN_LOAD_WARN
