"""Shared pieces of the launch scripts: a command runner with dry-run and retries,
input validation, and the argv of the main job.

Stdlib only, so the scripts run on any machine with Python 3.10+, before the
package (or JAX) is installed.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class LaunchError(Exception):
    """A problem the user can fix; printed without a traceback."""


class Runner:
    """Runs argv lists, or with ``dry_run`` only prints them (``+ cmd``, one per line)."""

    def __init__(self, dry_run: bool, retries: int = 3, retry_delay: float = 10.0):
        self.dry_run, self.retries, self.retry_delay = dry_run, retries, retry_delay

    def run(self, argv, *, retry: bool = False, capture: bool = False, check: bool = True,
            quiet: bool = False, cwd: str | None = None) -> subprocess.CompletedProcess:
        """Run ``argv``; with ``retry``, repeat failures with exponential backoff.

        Returns the completed process (stdout captured as text when ``capture``); a
        dry run returns an empty success. ``check`` raises LaunchError on failure;
        ``quiet`` does not echo the command (polls), except in a dry run.
        """
        argv = [str(a) for a in argv]
        line = "+ " + shlex.join(argv)
        if self.dry_run:
            print(line, flush=True)
            return subprocess.CompletedProcess(argv, 0, stdout="", stderr="")
        if not quiet:
            print(line, file=sys.stderr, flush=True)
        attempts = 1 + (self.retries if retry else 0)
        for attempt in range(attempts):
            try:
                proc = subprocess.run(argv, cwd=cwd, text=True,
                                      stdout=subprocess.PIPE if capture else None)
            except FileNotFoundError:
                raise LaunchError(f"'{argv[0]}' is not installed or not on PATH") from None
            if proc.returncode == 0 or attempt == attempts - 1:
                break
            # Transient API/ssh failures are common on fresh slices; back off and retry.
            delay = min(self.retry_delay * 2 ** attempt, 300.0)
            print(f"  exit {proc.returncode}; retry {attempt + 1}/{attempts - 1} in {delay:.0f}s",
                  file=sys.stderr, flush=True)
            time.sleep(delay)
        if check and proc.returncode != 0:
            raise LaunchError(f"command failed with exit {proc.returncode}: {shlex.join(argv)}")
        return proc

    def note(self, message: str) -> None:
        """Progress for the user: stderr, so dry-run stdout holds only commands."""
        print(message, file=sys.stderr, flush=True)


# --- validation ---------------------------------------------------------------

def check(pattern: str, value: str, flag: str, example: str) -> str:
    if not re.fullmatch(pattern, value or ""):
        raise LaunchError(f"{flag}={value!r} is not valid; expected something like {example}")
    return value


def split_overrides(extra: list[str]) -> list[str]:
    """Unparsed arguments must be config overrides of the form ``--config.a.b=value``."""
    for arg in extra:
        if not arg.startswith("--config."):
            raise LaunchError(f"unrecognised argument {arg!r}; only config overrides "
                              f"(--config.section.key=value) may follow the known options")
        if "=" not in arg:
            raise LaunchError(f"config override {arg!r} has no value; write it as {arg}=VALUE")
    return list(extra)


def check_config(path: str) -> str:
    """The config file must exist in the repository (paths are relative to its root)."""
    file = path.split(":", 1)[0]  # ml_collections allows "file.py:arg"
    if not os.path.isfile(os.path.join(REPO_ROOT, file)):
        raise LaunchError(f"--config={path!r}: no such file under the repository root "
                          f"{REPO_ROOT}; pass a path like configs/base.py")
    return path


def job_flags(config: str, workdir: str, overrides: list[str]) -> list[str]:
    """The main job's own flags."""
    return [f"--config={config}", f"--workdir={workdir}", *overrides]


def main_job_args(config: str, workdir: str, overrides: list[str]) -> list[str]:
    """Arguments of ``python -m copgen_jax.main`` (without the interpreter)."""
    return ["-m", "copgen_jax.main", *job_flags(config, workdir, overrides)]


def add_job_args(parser: argparse.ArgumentParser, workdir_help: str) -> None:
    parser.add_argument("--config", required=True,
                        help="config file relative to the repository root, e.g. configs/base.py")
    parser.add_argument("--workdir", required=True, help=workdir_help)


def cli(main) -> None:
    """Run ``main()`` and turn LaunchError / Ctrl-C into a clear message and exit code."""
    # A parent that ignores SIGINT (a script's background job) passes that on; the launchers
    # clean up on Ctrl-C (``all`` deletes its slice), so they always take it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        sys.exit(main())
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
