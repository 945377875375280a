"""Several processes (jax.distributed) on 127.0.0.1: two processes × 4 CPU devices equal one unsharded run
(tests/multihost_check.py), and a coordinator that cannot be reached fails cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_of_four_devices_equal_one(tmp_path):
    """jax.distributed on 127.0.0.1: two processes × 4 CPU devices form one (data 2, fsdp 2, tensor 2) mesh. LLaVA
    with ToDRE 1+2 (stage 2 firing for one row of the two: both processes take the same compiled branch) gives the
    unsharded tokens and kept indices; a converted LLaDA-V restored straight onto the mesh (each process reads its
    shards) gives the unsharded logits within 1e-5; process 0 alone writes the result. The test starts and stops
    both processes, with a timeout."""
    from convert import convert
    from tests.sharding_check import LLADA
    from vtp_jax.testbed import hf_llada_v

    hf_dir = str(tmp_path / "hf")
    hf_llada_v.write_random_llada_v(hf_dir, hf_llada_v.tiny_llada_v_config(**LLADA), seed=0)
    llada_dir = convert(hf_dir, str(tmp_path / "converted"), dtype="float32", progress=False)
    port, out = _free_port(), tmp_path / "out.json"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-m", "tests.multihost_check", str(port), str(i), llada_dir, str(out)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    try:
        logs = [p.communicate(timeout=420)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    report = json.loads(out.read_text())
    assert report["processes"] == 2 and report["devices"] == 8
    assert sorted(report["stage2_dropped"]) == [False, True]
    assert report["llada_v_logits_max_abs_diff"] <= 1e-5
    assert report["restored_up_proj_shard"] == [report["restored_up_proj_global"][0] // 2,
                                                report["restored_up_proj_global"][1] // 2]  # fsdp 2 × tensor 2


def test_unreachable_coordinator_exits_2(capsys):
    """Process 1 of 2 with nobody serving the coordinator: a named error after --coordinator-timeout, exit 2."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-m", "vtp_jax.cli", "--model", "/nonexistent", "--image", "x.png",
                           "--prompt", "hi", "--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", "2",
                           "--process-id", "1", "--coordinator-timeout", "3"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "process 1 of 2 could not join the coordinator at 127.0.0.1:" in done.stderr
    assert "Traceback" not in done.stderr
