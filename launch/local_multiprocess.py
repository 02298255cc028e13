#!/usr/bin/env python3
"""Run N processes of the main job on this machine, joined like the hosts of a pod.

Each process gets JAX_PLATFORMS=cpu, gloo CPU collectives and the three variables
the main job's multi-host start-up reads (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID), so multi-host code can be exercised without a cluster.

  python launch/local_multiprocess.py -n 2 --config configs/test.py --workdir /tmp/mp [--config.x=y]
  python launch/local_multiprocess.py -n 2 -- python my_multihost_check.py

Output lines are prefixed with ``[pI]``. If any process fails, the others are stopped
and the exit code is non-zero. ``--dry-run`` prints each command with its environment.
"""
from __future__ import annotations

import argparse
import os
import shlex
import socket
import subprocess
import sys
import threading
import time

from _common import REPO_ROOT, LaunchError, Runner, check_config, cli, main_job_args, split_overrides


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(i: int, n: int, port: int, devices: int) -> dict[str, str]:
    """The variables process ``i`` of ``n`` needs on top of the inherited environment."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    return {"JAX_PLATFORMS": "cpu", "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": str(n),
            "JAX_PROCESS_ID": str(i),
            "XLA_FLAGS": " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"]),
            "PYTHONUNBUFFERED": "1",
            # The checkout's package wins, installed or not.
            "PYTHONPATH": os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")]))}


def pump(i: int, stream, lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            sys.stdout.write(f"[p{i}] {line}")
            sys.stdout.flush()


def launch(commands, envs, timeout: float | None) -> int:
    """Start all processes, relay their output, stop the rest as soon as one fails."""
    lock, procs, threads = threading.Lock(), [], []
    try:
        for i, (cmd, env) in enumerate(zip(commands, envs)):
            procs.append(subprocess.Popen(cmd, cwd=REPO_ROOT, env={**os.environ, **env}, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
            threads.append(threading.Thread(target=pump, args=(i, procs[-1].stdout, lock), daemon=True))
            threads[-1].start()
        deadline = None if timeout is None else time.monotonic() + timeout
        while None in (codes := [p.poll() for p in procs]):
            failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                print(f"process {failed[0]} exited with code {codes[failed[0]]}; "
                      f"stopping the others", file=sys.stderr)
                break
            if deadline is not None and time.monotonic() > deadline:
                raise LaunchError(f"the processes did not finish within --timeout={timeout:g}s")
            time.sleep(0.1)
    finally:
        # A peer of a failed process would wait for it in a collective forever.
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for t in threads:
            t.join(timeout=5)
    codes = [p.returncode for p in procs]
    print(f"exit codes: {codes}", file=sys.stderr)
    return 1 if any(codes) else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--num-processes", type=int, default=2)
    p.add_argument("--devices-per-process", type=int, default=1, help="forced CPU devices per process")
    p.add_argument("--port", type=int, default=0, help="coordinator port (default: a free one)")
    p.add_argument("--config", help="config file relative to the repository root, e.g. configs/test.py")
    p.add_argument("--workdir", help="run directory shared by the processes")
    p.add_argument("--timeout", type=float, help="stop everything after this many seconds")
    p.add_argument("--dry-run", action="store_true", help="print each process's command and environment")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, command = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args, extra = parser().parse_known_args(own)
    overrides = split_overrides(extra)
    if args.num_processes < 1 or args.devices_per_process < 1:
        raise LaunchError("--num-processes and --devices-per-process must be at least 1")
    if not 0 <= args.port < 65536:
        raise LaunchError(f"--port={args.port} is not a TCP port (0 picks a free one)")
    if command:
        if args.config or args.workdir or overrides:
            raise LaunchError("give either --config/--workdir (the main job) or a command after --, not both")
    else:
        if not (args.config and args.workdir):
            raise LaunchError("--config and --workdir are required (or a command after --)")
        command = [sys.executable, *main_job_args(check_config(args.config), args.workdir, overrides)]
    port = args.port or free_port()
    n = args.num_processes
    envs = [process_env(i, n, port, args.devices_per_process) for i in range(n)]
    if args.dry_run:
        sh = Runner(dry_run=True)
        for env in envs:
            sh.run(["env", *(f"{k}={v}" for k, v in env.items()), *command])
        return 0
    print(f"{n} processes, coordinator 127.0.0.1:{port}: {shlex.join(command)}", file=sys.stderr)
    return launch([command] * n, envs, args.timeout)


if __name__ == "__main__":
    cli(main)
