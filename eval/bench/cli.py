"""The ``vtp-bench`` front end: flags (:func:`build_parser`), the sections run by generator kind
(:func:`run_bench`), the full-size presets (:func:`run_full_size_bench`, :mod:`eval.full_size_bench`), the text
report (:func:`format_report`) and :func:`main` (see :mod:`eval.bench` for what is measured).

Each section is one family of :func:`vtp_jax.families.families`, run by the runner of its generator kind
(:data:`SECTION_RUNNERS`) and printed by that kind's formatter (:data:`SECTION_FORMATTERS`); the JSON report keys each
section by the family's name (``"llava"``, ``"llada_v"``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any, Callable

from eval.bench.autoregressive import PRESETS, format_llava, run_llava
from eval.bench.diffusion import format_llada_v, run_llada_v
from eval.bench.errors import BenchError
from eval.bench.methods import DEFAULT_KEEPS, NOT_BENCHED, check_selection, family_methods
from eval.bench.report import RANDOM_WEIGHTS_NOTE
from vtp_jax import argtypes, families
from vtp_jax.families import AUTOREGRESSIVE, MASKED_DIFFUSION

DESCRIPTION = ("speed of LLaVA and LLaDA-V generation, every pruning method at keep 50/25/10 % — PyTorch vs "
               "vtp_jax.")
FULL_SIZE_PRESETS = ("llava-1.5-7b", "llava-next-7b", "llada-v-8b")  # = vtp_jax.testbed.full_size.PRESETS (eval/full_size_bench.py)
ALL_FAMILIES = "all"  # --family: every registered family
# The section of one family, by its generator kind: (args, log, family) → the section's JSON-able report.
SECTION_RUNNERS: dict[str, Callable[..., dict]] = {AUTOREGRESSIVE: run_llava, MASKED_DIFFUSION: run_llada_v}
# A section's text tables, by its family's generator kind: section report → text.
SECTION_FORMATTERS: dict[str, Callable[[dict], str]] = {AUTOREGRESSIVE: format_llava,
                                                         MASKED_DIFFUSION: format_llada_v}


def build_parser() -> argparse.ArgumentParser:
    """The ``vtp-bench`` argument parser."""
    p = argparse.ArgumentParser(prog="vtp-bench", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=RANDOM_WEIGHTS_NOTE + ".")
    p.add_argument("--family", choices=[*families.families(), ALL_FAMILIES], default=ALL_FAMILIES,
                   help="which section(s) to run: LLaVA, LLaDA-V or both (default all)")
    p.add_argument("--methods", default=None, metavar="M1,M2,...",
                   help="LLaVA: pruning methods to time, comma-separated (default: every one registered for LLaVA "
                        f"except {', '.join(NOT_BENCHED)}: {', '.join(family_methods('llava'))}; \"\" = none)")
    p.add_argument("--llada-methods", default=None, metavar="M1,M2,...",
                   help="LLaDA-V, setting 32/16: pruning methods to time, comma-separated (default: every one "
                        f"registered for LLaDA-V: {', '.join(family_methods('llada_v'))}; \"\" = none); the 2/2 "
                        "setting always times none, redvtp-50 and redvtp-25")
    p.add_argument("--diffusion-cache", default="none", metavar="MODE[@TAU],...",
                   help="LLaDA-V: Fast-dLLM variants to time besides the exact loop — cache modes (prefix, dual), "
                        "each optionally with a parallel-decoding threshold (dual@0.9; none@0.9 = threshold alone): "
                        "every jax variant again, named '<variant> [dual τ0.9]'")
    p.add_argument("--llada-settings", default=None, metavar="G/S/B,...",
                   help="LLaDA-V: gen_length/steps/block_length of each setting (default 32/16/32,2/2/2); the first "
                        "times every method, the others jax none and RedVTP")
    p.add_argument("--keeps", default=DEFAULT_KEEPS, metavar="P1,P2,...",
                   help="percentages of the visual tokens kept, each a variant of every method that takes a keep "
                        f"count, both families (default {DEFAULT_KEEPS})")
    p.add_argument("--preset", choices=sorted(PRESETS) + list(FULL_SIZE_PRESETS), default="tiny",
                   help="model sizes of every section (default tiny); llava-1.5-7b / llava-next-7b / llada-v-8b: "
                        "the real model's "
                        "shapes with RANDOM weights, one family, torch and jax in separate subprocesses "
                        "(eval/full_size_bench.py)")
    p.add_argument("--layers", type=int, default=None,  # range [1, 32] checked by full_size.check_preset
                   help="full-size presets: decoder layers to build (1..32, default 32) for quicker runs")
    p.add_argument("--cache-dir", default=None,
                   help="full-size presets: where the random-weight checkpoints are cached (default $VTP_CACHE or "
                        "~/.cache/vtp_jax/presets)")
    p.add_argument("--llada-image", default=None, metavar="HxW",
                   help="llada-v-8b: image height x width in pixels, which sets the anyres grid and N_v "
                        "(default 480x640: 2929 visual tokens)")
    for key in PRESETS["tiny"]:
        p.add_argument("--" + key.replace("_", "-"), type=argtypes.POSITIVE, default=None,
                       help=f"override the LLaVA preset's {key} (full-size presets: tests only, a reduced model)")
    p.add_argument("--runs", type=argtypes.POSITIVE, default=5,
                   help="timed runs per variant, ≥ 1; medians are reported (default 5)")
    p.add_argument("--warmup", type=argtypes.NON_NEGATIVE, default=1,
                   help="untimed runs per variant before timing, ≥ 0 (jax always makes at least one: the first call "
                        "compiles; default 1)")
    p.add_argument("--max-new-tokens", type=argtypes.integer(2), default=32,
                   help="LLaVA: tokens generated per run, ≥ 2 (default 32)")
    p.add_argument("--batch", type=argtypes.POSITIVE, default=1,
                   help="LLaVA: batch size (the prompt repeated; default 1; LLaDA-V always runs batch 1)")
    p.add_argument("--fastv-layer", type=argtypes.POSITIVE, default=2, help="LLaVA: FastV decoder layer K (default 2)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch baselines")
    p.add_argument("--torch-threads", type=argtypes.POSITIVE, default=None,
                   help="torch.set_num_threads for the baselines (default: torch's own default, left untouched)")
    p.add_argument("--torch-attn", choices=["sdpa", "eager"], default="sdpa",
                   help="LLaDA-V: attention of the PyTorch reference's decoder (default sdpa, as LLaDA's own code)")
    p.add_argument("--json", metavar="PATH", help="write every setting and measurement as JSON to PATH")
    p.add_argument("--quiet", action="store_true", help="print only the final report")
    p.add_argument("--mesh", action="append", default=None, metavar="data=D,fsdp=F,tensor=T",
                   help="device mesh (repeat for several): per-device memory of the compiled steps for a full-size "
                        "preset; sharded == unsharded generation and per-device parameter bytes for a bench preset. "
                        "Correctness and memory only (eval/bench/mesh.py); CPU devices are forced as needed")
    return p


def run_bench(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
    """Runs the sections that ``--family`` selects (each by the runner of its family's generator kind) and returns
    the JSON-able report: ``{"random_weights": true, "note", "families": [...], "llava": {...}, "llada_v": {...}}``
    (a section is absent when not run; each has its wall time ``section_wall_s``, seconds)."""
    if getattr(args, "mesh", None):
        from eval.bench.mesh import run_mesh_bench

        return run_mesh_bench(args, log)
    if args.preset in FULL_SIZE_PRESETS:
        return run_full_size_bench(args, log)
    if getattr(args, "layers", None) is not None or getattr(args, "llada_image", None) is not None:
        raise BenchError("--layers / --llada-image apply only to the full-size presets "
                         "(llava-1.5-7b, llava-next-7b, llada-v-8b)")
    registered = families.families()
    names = [args.family] if args.family in registered else list(registered)  # else --family all
    check_selection(args)  # bad --methods / --llada-methods / --keeps: fail before anything runs
    log("=" * 100)
    log(f"vtp-bench — {RANDOM_WEIGHTS_NOTE.upper()}")
    log("=" * 100)
    report: dict[str, Any] = {"random_weights": True, "note": RANDOM_WEIGHTS_NOTE, "families": names}
    for name in names:
        t0 = time.perf_counter()
        report[name] = SECTION_RUNNERS[families.get(name).kind](args, log, family=name)
        report[name]["section_wall_s"] = time.perf_counter() - t0
        log(f"{name} section: {report[name]['section_wall_s']:.0f} s")
    return report


def run_full_size_bench(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
    """A full-size preset (:mod:`eval.full_size_bench`): ``{"random_weights": true, "note", "families": [family],
    family: section}`` with the section's ``"full_size": true``."""
    from eval.full_size_bench import run_full_size, validate

    family = validate(args)["family"]  # every flag checked before anything runs
    log("=" * 100)
    log(f"vtp-bench --preset {args.preset} — {RANDOM_WEIGHTS_NOTE.upper()}")
    log("=" * 100)
    t0 = time.perf_counter()
    section = run_full_size(args, log)
    section["section_wall_s"] = time.perf_counter() - t0
    log(f"{args.preset}: {section['section_wall_s']:.0f} s")
    return {"random_weights": True, "note": RANDOM_WEIGHTS_NOTE, "families": [family], family: section}


def format_report(report: dict) -> str:
    """The human-readable tables and target lines of every section that ran."""
    if "mesh" in report:
        from eval.bench.mesh import MESH_NOTE, format_mesh

        return "\n".join(["", "#" * 100, f"# {MESH_NOTE.upper()}", "#" * 100, format_mesh(report["mesh"])])
    parts = ["", "#" * 100, f"# {RANDOM_WEIGHTS_NOTE.upper()}", "#" * 100]
    if any(report.get(f, {}).get("full_size") for f in report.get("families", [])):
        from eval.full_size_bench import format_full_size

        return "\n".join(parts + [format_full_size(report[f]) for f in report["families"]])
    for name in report.get("families", []):  # each section by its family's generator kind
        if name in report:
            parts.append(SECTION_FORMATTERS[families.get(name).kind](report[name]))
    return "\n".join(parts)


def check_json_path(path: str | None) -> None:
    """``--json PATH`` before anything runs: PATH is not a folder and its folder exists and takes a file (tried
    with a temporary file, removed at once). Raises BenchError naming the path."""
    if path is None:
        return
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise BenchError(f"--json: {path} is a folder")
    if not os.path.isdir(parent):
        raise BenchError(f"--json: folder {parent} does not exist")
    try:
        fd, probe = tempfile.mkstemp(prefix=".vtp-bench-probe-", dir=parent)
    except OSError as e:
        raise BenchError(f"--json: cannot write into {parent}: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(probe)


def respawn_for_mesh(argv: list[str] | None, meshes: list[str]) -> int | None:
    """When this CPU process has fewer devices than the largest mesh needs, runs ``vtp-bench`` again in a child with
    ``--xla_force_host_platform_device_count`` set and returns its exit code; None when the devices suffice (or on
    an accelerator, where the meshes must fit the devices there). Raises BenchError for a bad mesh."""
    from eval.bench.mesh import devices_needed
    from eval.mesh_memory import rerun_with_cpu_devices

    return rerun_with_cpu_devices("eval.bench", sys.argv[1:] if argv is None else list(argv),
                                  devices_needed(meshes))


def main(argv: list[str] | None = None) -> int:
    """Console entry point. Returns 0 (targets missed is not an error), 2 on bad arguments (argparse usage errors
    return 2 instead of raising SystemExit)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # usage error (2) or --help (0); argparse has printed its message
        return int(e.code or 0)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    if args.mesh:  # CPU: force as many host devices as the largest mesh needs (fixed when JAX starts)
        try:
            rc = respawn_for_mesh(argv, args.mesh)
        except BenchError as e:
            print(f"vtp-bench: error: {e}", file=sys.stderr)
            return 2
        if rc is not None:
            return rc
    from eval.full_size_bench import FullSizeError

    try:
        check_json_path(args.json)
        report = run_bench(args, log)
    except BenchError as e:
        print(f"vtp-bench: error: {e}", file=sys.stderr)
        return 2
    except FullSizeError as e:
        print(f"vtp-bench: error: {e}", file=sys.stderr)
        return 1
    print(format_report(report), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")
    return 0
