"""launch/: dry runs print the right commands, bad input fails clearly, and the shell
the scripts generate (remote job control, the SLURM script) really works."""
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import pytest

from tests import ROOT  # noqa: E402
POD = ["--name", "copgen-t", "--zone", "us-central2-b", "--project", "my-project"]
JOB = ["--config", "configs/base.py", "--workdir", "gs://bucket/run"]
FAST = ["--retry-delay", "0.01", "--poll-seconds", "0.01"]


def launch(script, *args, env=None, timeout=60):
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch", script), *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


def commands(stdout):
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def dry(script, *args):
    r = launch(script, *args, "--dry-run")
    assert r.returncode == 0, r.stderr
    return commands(r.stdout)


def remote(cmd):
    """The shell script an ssh command runs on the workers."""
    assert cmd[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"], cmd
    return next(a for a in cmd if a.startswith("--command=")).removeprefix("--command=")


def verb(cmd):
    return cmd[cmd.index("tpus") + 1:cmd.index("tpus") + 3] if cmd[0] == "gcloud" else cmd[:1]


# --- tpu_pod.py: dry runs -------------------------------------------------------------

def test_create_queues_a_slice_and_polls_its_state():
    create, describe = dry("tpu_pod.py", "create", *POD, "--spot")
    assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "copgen-t"]
    for flag in ["--node-id=copgen-t", "--accelerator-type=v4-32", "--runtime-version=tpu-ubuntu2204-base",
                 "--spot", "--zone=us-central2-b", "--project=my-project"]:
        assert flag in create
    assert describe[3:6] == ["queued-resources", "describe", "copgen-t"]
    assert "--format=value(state.state)" in describe

    create, _ = dry("tpu_pod.py", "create", *POD, "--best-effort", "--accelerator-type", "v5p-64")
    assert create[:2] == ["gcloud", "alpha"] and "--best-effort" in create and "--spot" not in create
    assert "--accelerator-type=v5p-64" in create


def test_setup_clones_a_repo_and_installs_on_every_worker():
    (ssh,) = dry("tpu_pod.py", "setup", *POD, "--repo", "https://example.com/copgen.git", "--ref", "v1")
    assert "--worker=all" in ssh
    steps = [shlex.split(step) for step in remote(ssh).split(" && ")]
    assert ["git", "clone", "--quiet", "https://example.com/copgen.git", "copgen_jax"] in steps
    assert ["git", "-C", "copgen_jax", "checkout", "--quiet", "v1"] in steps
    install = next(s for s in steps if "./copgen_jax[tpu]" in s)  # the tpu extra: jax[tpu], gcsfs
    assert install[1:4] == ["-m", "pip", "install"] and install[-2:] == ["-e", "./copgen_jax[tpu]"]
    assert ["python3", "-m", "uv", "venv", "--quiet", "--seed", "--python", "3.11", "copgen_venv"] in steps


def test_setup_ships_this_checkout_with_its_configs(tmp_path):
    archive, scp, ssh = dry("tpu_pod.py", "setup", *POD)
    assert archive[:4] == ["git", "-C", ROOT, "archive"] and archive[-1] == "HEAD"
    assert scp[3:5] == ["tpu-vm", "scp"] and scp[6] == "copgen-t:copgen_jax.tar.gz" and "--worker=all" in scp
    assert remote(ssh).startswith("rm -rf copgen_jax && tar -xzf copgen_jax.tar.gz && ")
    # The printed archive command really packs what the workers need under copgen_jax/.
    out = tmp_path / "a.tar.gz"
    archive[archive.index("-o") + 1] = str(out)
    subprocess.run(archive, check=True)
    names = tarfile.open(out).getnames()
    assert {"copgen_jax/setup.py", "copgen_jax/configs/base.py"} <= set(names)


def test_run_starts_the_main_job_detached_on_all_workers():
    (ssh,) = dry("tpu_pod.py", "run", *POD, *JOB, "--config.train.steps=10")
    assert "--worker=all" in ssh
    script = remote(ssh)
    assert ("-m copgen_jax.main --config=configs/base.py --workdir=gs://bucket/run "
            "--config.train.steps=10") in script
    assert "setsid nohup" in script and "copgen_logs/main.log" in script


def test_logs_stop_and_delete():
    (ssh,) = dry("tpu_pod.py", "logs", *POD)
    assert "--worker=0" in ssh and remote(ssh).startswith("tail --lines=100 -F ")
    (ssh,) = dry("tpu_pod.py", "logs", *POD, "--worker", "3", "--no-follow")
    assert "--worker=3" in ssh and "-F" not in shlex.split(remote(ssh))
    (ssh,) = dry("tpu_pod.py", "stop", *POD)
    assert "--worker=all" in ssh and "kill -TERM" in remote(ssh)
    (rm,) = dry("tpu_pod.py", "delete", *POD, "--quiet")
    assert rm[:8] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "copgen-t", "--force", "--quiet"]
    (rm,) = dry("tpu_pod.py", "delete", *POD)
    assert "--quiet" not in rm  # gcloud asks for confirmation


def test_all_goes_create_setup_run_wait_delete():
    cmds = dry("tpu_pod.py", "all", *POD, *JOB, "--repo", "https://example.com/copgen.git")
    assert [verb(c) for c in cmds] == [
        ["queued-resources", "create"], ["queued-resources", "describe"], ["tpu-vm", "ssh"],
        ["tpu-vm", "ssh"], ["queued-resources", "describe"], ["tpu-vm", "ssh"], ["queued-resources", "delete"]]
    setup, run, status = remote(cmds[2]), remote(cmds[3]), remote(cmds[5])
    assert "jax[tpu]" in setup and "copgen_jax.main" in run and "copgen-status" in status
    assert "--quiet" in cmds[-1]


@pytest.mark.parametrize("args, message", [
    (["create", "--name", "copgen-t", "--zone", "uscentral2b"], "--zone='uscentral2b' is not valid"),
    (["create", "--name", "Copgen_T", "--zone", "us-central2-b"], "--name='Copgen_T' is not valid"),
    (["create", *POD, "--accelerator-type", "v4-abc"], "--accelerator-type='v4-abc' is not valid"),
    (["create", *POD, "--accelerator-type", "v9-8"], "--accelerator-type='v9-8' is not valid"),
    (["create", *POD, "--spot", "--best-effort"], "not allowed with"),
    (["run", *POD, "--config", "configs/base.py", "--workdir", "/tmp/run"], "must be gs://BUCKET/PATH"),
    (["run", *POD, "--config", "configs/nope.py", "--workdir", "gs://bucket/run"], "no such file"),
    (["run", *POD, *JOB, "--config.train.steps"], "has no value"),
    (["run", *POD, *JOB, "--steps=3"], "unrecognised argument '--steps=3'"),
    (["delete", *POD, "--config.x=1"], "unrecognised arguments for delete"),
    (["logs", *POD, "--worker", "-1"], "must be 0 or more"),
])
def test_tpu_pod_rejects_bad_input_before_running_anything(args, message):
    r = launch("tpu_pod.py", *args, "--dry-run")
    assert r.returncode != 0 and message in r.stderr, r.stderr
    assert not commands(r.stdout)


# --- tpu_pod.py: real runs against a stand-in gcloud ------------------------------------

FAKE_GCLOUD = f"""#!{sys.executable}
import json, os, sys
log = os.environ["FAKE_LOG"]
calls = [json.loads(l) for l in open(log)] if os.path.exists(log) else []
with open(log, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if "describe" in sys.argv:
    states = os.environ["FAKE_STATES"].split(",")
    state = states[min(sum("describe" in c for c in calls), len(states) - 1)]
    sys.exit(1) if state == "ERROR" else print(state)
elif any("copgen-status" in a for a in sys.argv):
    print(os.environ["FAKE_STATUS"].replace(";", "\\n"))
"""


ALL = ["tpu_pod.py", "all", *POD, *JOB, *FAST, "--repo", "https://example.com/c.git"]


def fake_gcloud_env(tmp_path, states, status):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "gcloud").write_text(FAKE_GCLOUD)
    (tmp_path / "bin" / "gcloud").chmod(0o755)
    return {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
            "FAKE_LOG": str(tmp_path / "calls"), "FAKE_STATES": states, "FAKE_STATUS": status}


def gcloud_calls(tmp_path):
    return [json.loads(line)[2:4] for line in (tmp_path / "calls").read_text().splitlines()]


def run_against_fake_gcloud(tmp_path, states, status, *args):
    r = launch(*ALL, *args, env=fake_gcloud_env(tmp_path, states, status))
    return r, gcloud_calls(tmp_path)


def test_all_retries_transient_failures_and_deletes_the_slice_when_the_job_fails(tmp_path):
    r, calls = run_against_fake_gcloud(tmp_path, "ERROR,ACTIVE", "copgen-status done 0;copgen-status done 1")
    assert r.returncode == 2 and "the job failed on 1 of 2 workers (exit codes [0, 1])" in r.stderr, r.stderr
    assert calls[:3] == [["queued-resources", "create"], ["queued-resources", "describe"],
                         ["queued-resources", "describe"]]  # the failed describe was retried
    assert calls[-1] == ["queued-resources", "delete"]


def test_all_recreates_a_preempted_slice(tmp_path):
    r, calls = run_against_fake_gcloud(tmp_path, "ACTIVE,SUSPENDED,ACTIVE", "copgen-status done 0",
                                       "--restarts", "1")
    assert r.returncode == 0, r.stderr
    assert "resumes from its latest checkpoint" in r.stderr
    assert calls.count(["queued-resources", "create"]) == 2
    assert calls.count(["queued-resources", "delete"]) == 2 and calls[-1] == ["queued-resources", "delete"]


def test_all_deletes_the_slice_on_ctrl_c(tmp_path):
    env = fake_gcloud_env(tmp_path, "ACTIVE", "copgen-status running step 7")
    # Started with SIGINT ignored, as a script's background job is: the launcher still takes Ctrl-C.
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "launch", ALL[0]), *ALL[1:]], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        # Interrupt once the job has been polled twice (one progress line was printed).
        calls = tmp_path / "calls"
        wait_for(lambda: calls.exists() and sum("copgen-status" in c for c in calls.read_text().splitlines()) > 1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "running on 1 of 1 workers | step 7" in err, err
    assert gcloud_calls(tmp_path)[-1] == ["queued-resources", "delete"]


# --- tpu_pod.py: the generated worker shell, run here ----------------------------------

STUB_JOB = """#!/bin/sh
trap 'echo stopped; exit 7' TERM
echo "args: $*"; echo "cwd: $PWD"
while :; do sleep 0.05; done
"""


def wait_for(predicate, seconds=10.0):
    end = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


@pytest.mark.skipif(not (shutil.which("setsid") and os.path.isdir("/proc/self")), reason="needs Linux")
def test_worker_shell_detaches_the_job_refuses_a_second_and_stops_it(tmp_path):
    home = tmp_path / "home"
    (home / "copgen_jax").mkdir(parents=True)
    (home / "copgen_venv" / "bin").mkdir(parents=True)
    (home / "copgen_venv" / "bin" / "python").write_text(STUB_JOB)
    (home / "copgen_venv" / "bin" / "python").chmod(0o755)
    (run,) = dry("tpu_pod.py", "run", *POD, *JOB)
    (stop,) = dry("tpu_pod.py", "stop", *POD)
    status = remote(dry("tpu_pod.py", "all", *POD, *JOB, "--repo", "u")[5])

    def sh(cmd):
        return subprocess.run(["bash", "-c", remote(cmd) if isinstance(cmd, list) else cmd], env={
            **os.environ, "HOME": str(home)}, capture_output=True, text=True, timeout=20)

    log = home / "copgen_logs" / "main.log"
    assert sh(status).stdout.strip() == "copgen-status lost"  # nothing started yet
    try:
        assert sh(run).returncode == 0
        wait_for(lambda: log.exists() and "cwd:" in log.read_text())
        text = log.read_text()
        assert "args: -m copgen_jax.main --config=configs/base.py --workdir=gs://bucket/run" in text
        assert f"cwd: {home / 'copgen_jax'}" in text
        assert sh(status).stdout.startswith("copgen-status running")
        second = sh(run)
        assert second.returncode == 1 and "already running" in second.stderr
    finally:
        assert sh(stop).returncode == 0
    wait_for(lambda: (home / "copgen_logs" / "main.rc").exists())
    assert sh(status).stdout.strip() == "copgen-status done 7" and "stopped" in log.read_text()


# --- slurm.py ------------------------------------------------------------------------

SLURM = ["--nodes", "2", "--gpus-per-node", "8", "--config", "configs/base.py", "--workdir", "/shared/runs/x"]


def rendered(*args):
    r = launch("slurm.py", *SLURM, *args, "--dry-run")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    return "\n".join(lines[:-1]) + "\n", shlex.split(lines[-1][2:])


def test_slurm_dry_run_prints_the_script_and_sbatch():
    script, sbatch = rendered("--partition", "gpu", "--config.train.steps=5")
    assert sbatch == ["sbatch", "/shared/runs/x/copgen.sbatch"]
    lines = script.splitlines()
    for directive in ["--nodes=2", "--gpus-per-node=8", "--ntasks-per-node=1", "--partition=gpu",
                      "--output=/shared/runs/x/slurm-%x-%j.out"]:
        assert f"#SBATCH {directive}" in lines
    assert any(line.startswith("JOB_ARGS=(--config=configs/base.py --workdir=/shared/runs/x "
                               "--config.train.steps=5)") for line in lines)
    assert 'export JAX_NUM_PROCESSES="$SLURM_NTASKS"' in lines
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p' in script
    assert 'export JAX_PROCESS_ID="$SLURM_PROCID"' in script and "srun " in script
    script, _ = rendered("--process-per-gpu")
    assert "#SBATCH --ntasks-per-node=8" in script.splitlines()


def test_slurm_script_gives_each_task_its_process_id(tmp_path):
    """Run the rendered script with scontrol/srun stand-ins: each task sees the JAX variables."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    stubs = {
        "scontrol": 'echo gpu-a; seq -f gpu-%g 50000',  # a long list: reading only line 1 must not fail
        # srun: drop options, start SLURM_NTASKS tasks of the command in turn.
        "srun": 'while [ "${1#-}" != "$1" ]; do shift; done\n'
                'for i in $(seq 0 $((SLURM_NTASKS - 1))); do SLURM_PROCID=$i SLURM_LOCALID=0 "$@" || exit; done',
        "job": 'echo "task $JAX_PROCESS_ID/$JAX_NUM_PROCESSES at $JAX_COORDINATOR_ADDRESS in $PWD: $*"',
    }
    for name, body in stubs.items():
        (bin_ / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_ / name).chmod(0o755)
    script, _ = rendered("--python", str(bin_ / "job"), "--config.train.steps=5")
    (tmp_path / "job.sbatch").write_text(script)
    env = {**os.environ, "PATH": f"{bin_}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-[a-b]",
           "SLURM_JOB_ID": "123456", "SLURM_NTASKS": "2", "SLURM_JOB_NUM_NODES": "2"}
    r = subprocess.run(["bash", str(tmp_path / "job.sbatch")], env=env, capture_output=True, text=True,
                       timeout=20, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    args = "-m copgen_jax.main --config=configs/base.py --workdir=/shared/runs/x --config.train.steps=5"
    for i in range(2):
        assert f"task {i}/2 at gpu-a:23456 in {ROOT}: {args}" in r.stdout.splitlines()


def test_slurm_writes_the_script_and_submits_it(tmp_path):
    (tmp_path / "sbatch").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'submitted'}\n")
    (tmp_path / "sbatch").chmod(0o755)
    workdir = tmp_path / "run"
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    r = launch("slurm.py", "--config", "configs/base.py", "--workdir", str(workdir), env=env)
    assert r.returncode == 0, r.stderr
    path = workdir / "copgen.sbatch"
    assert (tmp_path / "submitted").read_text().strip() == str(path)
    assert f"JOB_ARGS=(--config=configs/base.py --workdir={workdir})" in path.read_text()


@pytest.mark.parametrize("args, message", [
    (["--workdir", "runs/x"], "must be an absolute path"),
    (["--nodes", "0"], "--nodes=0 must be at least 1"),
    (["--time", "forever"], "--time='forever' is not valid"),
    (["--config", "configs/nope.py"], "no such file"),
    (["--steps=3"], "unrecognised argument"),
])
def test_slurm_rejects_bad_input(args, message):
    r = launch("slurm.py", *SLURM, *args, "--dry-run")
    assert r.returncode != 0 and message in r.stderr, r.stderr
    assert not commands(r.stdout)


# --- local_multiprocess.py ---------------------------------------------------------------

def test_local_dry_run_prints_each_process_with_its_environment():
    cmds = dry("local_multiprocess.py", "-n", "2", "--config", "configs/test.py", "--workdir", "/tmp/mp",
               "--config.train.steps=3")
    assert len(cmds) == 2
    envs = [dict(a.split("=", 1) for a in c[1:] if "=" in a and not a.startswith("--")) for c in cmds]
    for i, (cmd, env) in enumerate(zip(cmds, envs)):
        assert cmd[0] == "env" and env["JAX_PROCESS_ID"] == str(i) and env["JAX_NUM_PROCESSES"] == "2"
        assert env["JAX_PLATFORMS"] == "cpu" and env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] == "gloo"
        assert cmd[-5:] == ["-m", "copgen_jax.main", "--config=configs/test.py", "--workdir=/tmp/mp",
                            "--config.train.steps=3"]
    assert envs[0]["JAX_COORDINATOR_ADDRESS"] == envs[1]["JAX_COORDINATOR_ADDRESS"]
    assert envs[0]["JAX_COORDINATOR_ADDRESS"].startswith("127.0.0.1:")


def test_local_runs_processes_prefixes_output_and_stops_all_when_one_fails():
    code = ("import os; e = os.environ; "
            "print('hello', e['JAX_PROCESS_ID'], e['JAX_NUM_PROCESSES'], e['JAX_COORDINATOR_ADDRESS'])")
    r = launch("local_multiprocess.py", "-n", "3", "--port", "45678", "--", sys.executable, "-c", code)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == [f"[p{i}] hello {i} 3 127.0.0.1:45678" for i in range(3)]

    sleeper = "import os, sys, time; sys.exit(3) if os.environ['JAX_PROCESS_ID'] == '1' else time.sleep(60)"
    start = time.monotonic()
    r = launch("local_multiprocess.py", "-n", "3", "--", sys.executable, "-c", sleeper)
    assert r.returncode == 1 and "process 1 exited with code 3" in r.stderr, r.stderr
    assert time.monotonic() - start < 30  # the sleepers were stopped, not waited for


@pytest.mark.parametrize("args, message", [
    (["--config", "configs/test.py"], "--config and --workdir are required"),
    (["--config", "configs/test.py", "--workdir", "/tmp/x", "--", "true"], "not both"),
    (["-n", "0", "--", "true"], "at least 1"),
])
def test_local_rejects_bad_input(args, message):
    r = launch("local_multiprocess.py", *args, "--dry-run")
    assert r.returncode != 0 and message in r.stderr, r.stderr
