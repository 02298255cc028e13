"""The entry point as users run it: --describe, SIGTERM, and two processes on localhost."""
import json
import os
import re
import signal
import subprocess
import sys

import portpicker
import pytest

from tests import ROOT  # noqa: E402


def env(devices=1, **extra):
    e = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    e.pop("JAX_COORDINATOR_ADDRESS", None)
    e.update(extra)
    return e


def main_cmd(*args):
    return [sys.executable, "-m", "copgen_jax.main", *args]


def final_metrics(log):
    found = re.findall(r"final metrics (\{.*\})", log)
    assert found, log[-3000:]
    return json.loads(found[-1])


def test_describe_prints_json_without_allocating():
    out = subprocess.run(main_cmd("--config=configs/tpu_v4.py", "--describe"), cwd=ROOT, env=env(),
                         capture_output=True, text=True, check=True)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["params"] == 286_986_562 and info["tokens"] == 834
    assert info["tokens_per_modality"]["S2L2A_B02_B03_B04_B08"] == 144
    assert info["mesh"] == {"data": 1, "fsdp": 16, "tensor": 1}
    # fully sharded over 16 chips: about 1/16 of the fp32 weights each
    assert info["param_bytes_total"] == 4 * 286_986_562
    assert info["param_bytes_per_device"] < info["param_bytes_total"] / 15


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    workdir = tmp_path / "run"
    args = main_cmd("--config=configs/test.py", f"--workdir={workdir}", "--config.train.steps=100000",
                    "--config.train.log_every=1", "--config.train.checkpoint_every=100000")
    proc = subprocess.Popen(args, cwd=ROOT, env=env(), stderr=subprocess.PIPE, text=True)
    log = []
    for line in proc.stderr:
        log.append(line)
        if "step 3 |" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=120)
    log.append(rest)
    assert proc.returncode == 0, "".join(log)[-3000:]
    saved = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(saved) == 1 and 3 <= saved[0] < 100000
    again = subprocess.run(main_cmd("--config=configs/test.py", f"--workdir={workdir}",
                                    f"--config.train.steps={saved[0] + 1}"),
                           cwd=ROOT, env=env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from step {saved[0]}" in again.stderr


def test_two_processes_on_localhost_agree_with_one(tmp_path):
    """jax.distributed over gloo: each process feeds half the batch; results equal a 1-process run."""
    steps = ["--config=configs/test.py", "--config.train.steps=3", "--config.train.log_every=1"]
    port = portpicker.pick_unused_port()
    procs = [subprocess.Popen(main_cmd(*steps, f"--workdir={tmp_path / 'multi'}"), cwd=ROOT,
                              env=env(2, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                                      JAX_PROCESS_ID=str(i)),
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    single = subprocess.run(main_cmd(*steps, f"--workdir={tmp_path / 'single'}"), cwd=ROOT, env=env(4),
                            capture_output=True, text=True)
    logs = [p.communicate(timeout=300)[1] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    assert "process 1 of 2, 2 local / 4 global devices" in logs[1]
    results = [final_metrics(log) for log in logs]
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], rel=1e-6)
    assert results[0]["loss"] == pytest.approx(final_metrics(single.stderr)["loss"], rel=1e-5)
    assert (tmp_path / "multi" / "checkpoints" / "3").exists()


def test_sigterm_on_one_host_stops_every_host_at_the_same_step(tmp_path):
    """Two processes: SIGTERM reaches only process 1, yet both save one checkpoint, at one step
    (Orbax's reached_preemption over the distributed runtime), exit cleanly, and resume from it."""
    workdir = tmp_path / "run"
    steps = ["--config=configs/test.py", f"--workdir={workdir}", "--config.train.steps=100000",
             "--config.train.log_every=1", "--config.train.checkpoint_every=100000"]
    port = portpicker.pick_unused_port()
    cluster = dict(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2")
    procs = [subprocess.Popen(main_cmd(*steps), cwd=ROOT, env=env(2, **cluster, JAX_PROCESS_ID=str(i)),
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    log0 = []
    for line in procs[0].stderr:
        log0.append(line)
        if "step 3 |" in line:
            procs[1].send_signal(signal.SIGTERM)
            break
    logs = ["".join(log0) + procs[0].communicate(timeout=180)[1], procs[1].communicate(timeout=180)[1]]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    saved = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(saved) == 1 and 3 <= saved[0] < 100000, saved
    for log in logs:
        assert f"checkpoint for step {saved[0]} written after a preemption notice" in log
    port = portpicker.pick_unused_port()
    cluster["JAX_COORDINATOR_ADDRESS"] = f"localhost:{port}"
    resumed = [subprocess.Popen(main_cmd(*steps[:2], f"--config.train.steps={saved[0] + 1}"), cwd=ROOT,
                                env=env(2, **cluster, JAX_PROCESS_ID=str(i)), stderr=subprocess.PIPE, text=True)
               for i in range(2)]
    for p in resumed:
        log = p.communicate(timeout=180)[1]
        assert p.returncode == 0 and f"resumed from step {saved[0]}" in log, log[-3000:]
