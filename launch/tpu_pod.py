#!/usr/bin/env python3
"""Cloud TPU VM pod slices for copgen_jax: create, set up, run, follow, stop, delete.

Every worker of a slice runs the same ``python -m copgen_jax.main`` (JAX finds its
peers through the TPU runtime); the workdir is on GCS so that all workers share
checkpoints and it outlives the slice.

  python launch/tpu_pod.py all --name copgen --zone us-central2-b --project P \\
      --config configs/tpu_v4.py --workdir gs://BUCKET/run --spot

Subcommands: create, setup, run, logs, stop, delete, all. ``--dry-run`` prints the
commands (``+ cmd``, one per line) instead of running them. See launch/README.md.
"""
from __future__ import annotations

import argparse
import itertools
import os
import shlex
import tempfile
import time

from _common import (REPO_ROOT, LaunchError, Runner, add_job_args, check, check_config, cli,
                     main_job_args, split_overrides)

# Layout on each worker, relative to the ssh user's home (where ssh commands start).
REPO, VENV, ARCHIVE = "copgen_jax", "copgen_venv", "copgen_jax.tar.gz"
LOGS = '"$HOME/copgen_logs"'
LOG, RC, RC_TMP, PID = (f'"$HOME/copgen_logs/{f}"' for f in ("main.log", "main.rc", "main.rc.tmp", "main.pid"))

# The recorded pid is alive and really is the job (pids are reused after a reboot).
ALIVE = f'[ -f {PID} ] && grep -q copgen_jax.main "/proc/$(cat {PID})/cmdline" 2>/dev/null'
# One line per worker: "copgen-status done CODE", "running LAST_LOG_LINE" or "lost".
STATUS = (f'if [ -f {RC} ]; then echo "copgen-status done $(cat {RC})"; '
          f'elif {ALIVE}; then echo "copgen-status running $(tail -n 1 {LOG} | cut -c1-160)"; '
          f'else echo "copgen-status lost"; fi')
BAD_STATES = {"FAILED", "SUSPENDING", "SUSPENDED", "DELETING"}


class Preempted(LaunchError):
    """The slice went away under a running job (spot / best-effort capacity reclaimed)."""


def gcloud(args, *words, alpha: bool = False) -> list[str]:
    argv = ["gcloud", *(["alpha"] if alpha else []), "compute", "tpus", *words, f"--zone={args.zone}"]
    return argv + ([f"--project={args.project}"] if args.project else [])


def ssh(args, script: str, worker="all") -> list[str]:
    return gcloud(args, "tpu-vm", "ssh", args.name, f"--worker={worker}", f"--command={script}")


def qr_state(args, sh: Runner) -> str | None:
    """The queued resource's state (ACTIVE, WAITING_FOR_RESOURCES, ...), None if absent."""
    proc = sh.run(gcloud(args, "queued-resources", "describe", args.name, "--format=value(state.state)"),
                  retry=True, capture=True, check=False, quiet=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def elapsed(start: float) -> str:
    s = int(time.monotonic() - start)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


# --- subcommands ----------------------------------------------------------------

def create(args, sh: Runner) -> None:
    flags = [f"--node-id={args.name}", f"--accelerator-type={args.accelerator_type}",
             f"--runtime-version={args.runtime_version}"]
    flags += ["--spot"] if args.spot else []
    flags += ["--best-effort"] if args.best_effort else []  # only in the alpha track
    if sh.run(gcloud(args, "queued-resources", "create", args.name, *flags, alpha=args.best_effort),
              check=False).returncode != 0:
        state = qr_state(args, sh)
        if state is None:
            raise LaunchError(f"could not create queued resource {args.name!r} (gcloud's message is "
                              f"above: quota, zone or accelerator type?)")
        sh.note(f"queued resource {args.name} already exists ({state}); waiting for it")
    start, last = time.monotonic(), None
    while True:
        state = qr_state(args, sh)
        if sh.dry_run or state == "ACTIVE":
            return
        if state is None or state in BAD_STATES:
            raise LaunchError(f"queued resource {args.name} is {state or 'gone'}; delete it and create again")
        if state != last:
            sh.note(f"[{elapsed(start)}] {args.name}: {state}")
            last = state
        if time.monotonic() - start > args.wait_timeout:
            raise LaunchError(f"{args.name} is still {state} after {args.wait_timeout:.0f}s; "
                              f"it stays queued: wait with `create` again, or `delete` it")
        time.sleep(args.poll_seconds)


def setup(args, sh: Runner) -> None:
    """Put the code on every worker and install it with JAX for TPU into a venv."""
    if args.repo:
        fetch = [["rm", "-rf", REPO], ["git", "clone", "--quiet", args.repo, REPO]]
        fetch += [["git", "-C", REPO, "checkout", "--quiet", args.ref]] if args.ref else []
    else:
        # git archive, not an sdist: the workers need configs/ too, and only tracked files travel.
        ref = args.ref or "HEAD"
        if not sh.dry_run and sh.run(["git", "-C", REPO_ROOT, "status", "--porcelain"],
                                     capture=True, quiet=True).stdout.strip():
            sh.note(f"note: uncommitted changes are not shipped; the workers get {ref}")
        archive = os.path.join(tempfile.gettempdir(), f"{args.name}-{ARCHIVE}")
        sh.run(["git", "-C", REPO_ROOT, "archive", "--format=tar.gz", f"--prefix={REPO}/", "-o", archive, ref])
        sh.run(gcloud(args, "tpu-vm", "scp", archive, f"{args.name}:{ARCHIVE}", "--worker=all"), retry=True)
        fetch = [["rm", "-rf", REPO], ["tar", "-xzf", ARCHIVE]]
    # The TPU images ship an older Python than JAX needs: uv provides the interpreter.
    python = f"{VENV}/bin/python"
    install = [["python3", "-m", "pip", "install", "--user", "--quiet", "--upgrade", "uv"],
               ["rm", "-rf", VENV],
               ["python3", "-m", "uv", "venv", "--quiet", "--seed", "--python", args.python, VENV],
               [python, "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
               [python, "-m", "pip", "install", "--quiet", "-e", f"./{REPO}[tpu]"],  # jax[tpu], gcsfs
               [python, "-c", "import copgen_jax, jax; print(jax.__version__)"]]
    sh.run(ssh(args, " && ".join(map(shlex.join, fetch + install))), retry=True)


def run(args, sh: Runner) -> None:
    """Start the main job on all workers, detached from ssh, appending to a per-worker log."""
    job = shlex.join(main_job_args(args.config, args.workdir, args.overrides))
    # The job's own pid goes to PID (stop signals it alone); its exit code to RC.
    inner = (f'PYTHONUNBUFFERED=1 "$HOME/{VENV}/bin/python" {job} & echo $! > {PID}; '
             f"wait $!; echo $? > {RC_TMP} && mv {RC_TMP} {RC}")
    script = (
        f"mkdir -p {LOGS} && "
        f'if {ALIVE}; then echo "copgen: a job is already running on $(hostname); stop it first" >&2; '
        f'exit 1; fi && cd "$HOME/{REPO}" && rm -f {RC} && '
        f'echo "=== copgen run $(date -u +%FT%TZ) ===" >> {LOG} && '
        # setsid + nohup: the job outlives the ssh session that started it.
        f"(setsid nohup sh -c {shlex.quote(inner)} >> {LOG} 2>&1 < /dev/null &) && "
        f'echo "copgen: started on $(hostname)"')
    sh.run(ssh(args, script))


def logs(args, sh: Runner) -> int:
    tail = ["tail", f"--lines={args.lines}", *([] if args.no_follow else ["-F"])]
    return sh.run(ssh(args, f"{shlex.join(tail)} {LOG}", worker=args.worker), check=False).returncode


def stop(args, sh: Runner) -> None:
    """SIGTERM the job on every worker: it saves a checkpoint at the next step and exits."""
    sh.run(ssh(args, f'if {ALIVE}; then kill -TERM "$(cat {PID})"; fi'), retry=True)


def delete(args, sh: Runner, quiet: bool) -> None:
    # --force deletes the TPU node together with its queued resource.
    sh.run(gcloud(args, "queued-resources", "delete", args.name, "--force", *(["--quiet"] if quiet else [])),
           retry=True)


def job_status(stdout: str) -> tuple[list[int | None], str]:
    """Parse STATUS lines: per worker the exit code (None while running), and a log line."""
    codes, latest = [], ""
    for line in stdout.splitlines():
        word, _, rest = line.removeprefix("copgen-status ").partition(" ")
        if not line.startswith("copgen-status "):
            continue
        if word == "lost":
            raise LaunchError("the job stopped on a worker without an exit code (worker rebooted or "
                              "killed?); read its log with `logs --worker N`, then `run` again to resume")
        codes.append(int(rest) if word == "done" else None)
        latest = latest or (rest if word == "running" else "")
    return codes, latest


def wait_job(args, sh: Runner) -> None:
    """Poll every worker until the job has finished everywhere; fail if it failed anywhere."""
    start = time.monotonic()
    while True:
        state = qr_state(args, sh)
        if not sh.dry_run and state != "ACTIVE":
            raise Preempted(f"{args.name} became {state or 'gone'} while the job was running")
        proc = sh.run(ssh(args, STATUS), retry=True, capture=True, check=False, quiet=True)
        if sh.dry_run:
            return
        codes, latest = job_status(proc.stdout)
        if proc.returncode == 0 and codes and None not in codes:
            if any(codes):
                raise LaunchError(f"the job failed on {sum(map(bool, codes))} of {len(codes)} workers "
                                  f"(exit codes {codes}); read them with `logs --worker N`")
            sh.note(f"[{elapsed(start)}] the job finished on all {len(codes)} workers")
            return
        sh.note(f"[{elapsed(start)}] running on {codes.count(None)} of {len(codes)} workers | {latest}")
        time.sleep(args.poll_seconds)


def all_(args, sh: Runner) -> None:
    """create → setup → run → wait → delete; the slice is deleted whatever happens."""
    try:
        for attempt in itertools.count():
            try:
                create(args, sh)
                setup(args, sh)
                run(args, sh)
                wait_job(args, sh)
                return
            except Preempted as e:
                if attempt >= args.restarts:
                    raise
                sh.note(f"{e}; recreating it (restart {attempt + 1} of {args.restarts}); "
                        f"the job resumes from its latest checkpoint in {args.workdir}")
                delete(args, sh, quiet=True)
    finally:
        try:
            delete(args, sh, quiet=True)
        except LaunchError as e:
            sh.note(f"{e}\nthe slice may still exist: run `delete` for {args.name} and check "
                    f"`gcloud compute tpus queued-resources list`")


# --- command line ------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", required=True, help="queued resource and TPU node name")
    common.add_argument("--zone", required=True, help="e.g. us-central2-b (where v4 lives)")
    common.add_argument("--project", help="GCP project (default: gcloud's configured project)")
    common.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    common.add_argument("--retries", type=int, default=3, help="retries of transient gcloud failures")
    common.add_argument("--retry-delay", type=float, default=10.0, help="first backoff delay (s)")

    make = argparse.ArgumentParser(add_help=False)
    make.add_argument("--accelerator-type", default="v4-32", help="e.g. v4-32, v5p-64, v5litepod-16")
    make.add_argument("--runtime-version", default="tpu-ubuntu2204-base")
    tier = make.add_mutually_exclusive_group()
    tier.add_argument("--spot", action="store_true", help="spot capacity: cheaper, preemptible")
    tier.add_argument("--best-effort", action="store_true", help="best-effort tier (gcloud alpha)")
    make.add_argument("--wait-timeout", type=float, default=24 * 3600, help="max seconds queued")
    make.add_argument("--poll-seconds", type=float, default=30.0)

    install = argparse.ArgumentParser(add_help=False)
    install.add_argument("--repo", help="git URL to clone on the workers (default: ship this checkout)")
    install.add_argument("--ref", help="branch, tag or commit (default: the clone's default / HEAD)")
    install.add_argument("--python", default="3.11", help="Python version of the workers' venv")

    job = argparse.ArgumentParser(add_help=False)
    add_job_args(job, "gs://BUCKET/PATH shared by all workers (checkpoints, TensorBoard)")

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="run and all accept config overrides: --config.section.key=value")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("create", parents=[common, make], help="queue a slice and wait until ACTIVE")
    sub.add_parser("setup", parents=[common, install], help="install the package on every worker")
    sub.add_parser("run", parents=[common, job], help="start the main job on every worker")
    lg = sub.add_parser("logs", parents=[common], help="follow one worker's log")
    lg.add_argument("--worker", type=int, default=0)
    lg.add_argument("--lines", type=int, default=100)
    lg.add_argument("--no-follow", action="store_true", help="print the last lines and return")
    sub.add_parser("stop", parents=[common], help="SIGTERM the job (it checkpoints and exits)")
    rm = sub.add_parser("delete", parents=[common], help="delete the queued resource and its node")
    rm.add_argument("--quiet", action="store_true", help="do not ask gcloud's confirmation")
    al = sub.add_parser("all", parents=[common, make, install, job],
                        help="create, setup, run, wait, delete (also on failure or Ctrl-C)")
    al.add_argument("--restarts", type=int, default=0, help="recreate the slice after preemption")
    return p


def validate(args) -> None:
    check(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", args.name, "--name", "copgen-v4 (lowercase, digits, -)")
    check(r"[a-z]+-[a-z]+[0-9]+-[a-z]", args.zone, "--zone", "us-central2-b or europe-west4-a")
    if args.project is not None:
        check(r"([a-z0-9.-]+:)?[a-z][-a-z0-9]{4,28}[a-z0-9]", args.project, "--project", "my-project-123")
    if "accelerator_type" in args:
        check(r"(v2|v3|v4|v5p|v5litepod|v6e)-[1-9][0-9]*", args.accelerator_type, "--accelerator-type",
              "v4-32, v5p-64 or v5litepod-16")
    if "python" in args:
        check(r"3\.[0-9]+", args.python, "--python", "3.11")
    if "workdir" in args:
        if not args.workdir.startswith("gs://"):
            raise LaunchError(f"--workdir={args.workdir!r} must be gs://BUCKET/PATH: all workers of a pod "
                              f"share checkpoints there, and a slice's disks vanish when it is deleted")
        check(r"gs://[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9](/.*)?", args.workdir, "--workdir", "gs://my-bucket/runs/x")
        check_config(args.config)
    if "worker" in args and args.worker < 0:
        raise LaunchError(f"--worker={args.worker} must be 0 or more (0 is the first worker)")


def main(argv=None) -> int:
    args, extra = parser().parse_known_args(argv)
    if args.command in ("run", "all"):
        args.overrides = split_overrides(extra)
    elif extra:
        raise LaunchError(f"unrecognised arguments for {args.command}: {' '.join(extra)}")
    validate(args)
    sh = Runner(args.dry_run, retries=args.retries, retry_delay=args.retry_delay)
    if args.command == "logs":
        return logs(args, sh)
    if args.command == "delete":
        delete(args, sh, quiet=args.quiet)
    else:
        {"create": create, "setup": setup, "run": run, "stop": stop, "all": all_}[args.command](args, sh)
    return 0


if __name__ == "__main__":
    cli(main)
