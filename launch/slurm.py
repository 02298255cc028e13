#!/usr/bin/env python3
"""Render launch/slurm_gpu.sbatch for a multi-node GPU run of copgen_jax and submit it.

  python launch/slurm.py --nodes 2 --gpus-per-node 8 --config configs/gpu_h100.py \\
      --workdir /shared/runs/x [--config.section.key=value ...] [--dry-run]

The rendered script records the resources, the repository path and the job's
arguments, and is written next to the run (WORKDIR/JOB_NAME.sbatch) before
``sbatch`` submits it. ``--dry-run`` prints the script and the ``sbatch`` command.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex

from _common import (REPO_ROOT, LaunchError, Runner, add_job_args, check, check_config, cli,
                     job_flags, split_overrides)

TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "slurm_gpu.sbatch")
DIRECTIVE = re.compile(r"#SBATCH --([a-z-]+)=(.*)")
NAME = r"[A-Za-z0-9_.-]+"


def render(template: str, directives: dict[str, str], variables: dict[str, str]) -> str:
    """Set ``#SBATCH --key=value`` lines (adding missing ones after the last) and the
    shell assignments ``NAME=...`` named in ``variables`` (values already shell-quoted)."""
    lines, todo, last = template.splitlines(), dict(directives), 0
    for i, line in enumerate(lines):
        if m := DIRECTIVE.fullmatch(line):
            last = i
            if m[1] in todo:
                lines[i] = f"#SBATCH --{m[1]}={todo.pop(m[1])}"
        elif (name := line.split("=", 1)[0]) in variables:
            lines[i] = f"{name}={variables.pop(name)}  # set by launch/slurm.py"
    if variables:
        raise LaunchError(f"{TEMPLATE} has no line assigning {', '.join(variables)}; restore the template")
    lines[last + 1:last + 1] = [f"#SBATCH --{k}={v}" for k, v in todo.items()]
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="config overrides (--config.section.key=value) go to the job")
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--process-per-gpu", action="store_true",
                   help="one JAX process per GPU instead of one per node")
    p.add_argument("--cpus-per-task", type=int, default=16)
    p.add_argument("--time", default="24:00:00", help="time limit, e.g. 24:00:00 or 2-00:00:00")
    p.add_argument("--partition", help="SLURM partition (default: the cluster's)")
    p.add_argument("--account", help="SLURM account to charge")
    p.add_argument("--job-name", default="copgen")
    p.add_argument("--python", help="interpreter with copgen_jax and jax[cuda12] (default: $PYTHON or python)")
    add_job_args(p, "absolute path on a filesystem shared by all nodes (or gs://BUCKET/PATH)")
    p.add_argument("--script", help="where to write the rendered script (default WORKDIR/JOB_NAME.sbatch)")
    p.add_argument("--dry-run", action="store_true", help="print the script and sbatch command only")
    return p


def validate(args) -> None:
    for flag in ("nodes", "gpus_per_node", "cpus_per_task"):
        if getattr(args, flag) < 1:
            raise LaunchError(f"--{flag.replace('_', '-')}={getattr(args, flag)} must be at least 1")
    check(r"([0-9]+-)?[0-9]+(:[0-9]{2}){0,2}", args.time, "--time", "24:00:00 or 2-00:00:00")
    check(NAME, args.job_name, "--job-name", "copgen")
    for flag in ("partition", "account"):
        if getattr(args, flag) is not None:
            check(NAME, getattr(args, flag), f"--{flag}", "gpu")
    if not (args.workdir.startswith("gs://") or os.path.isabs(args.workdir)):
        raise LaunchError(f"--workdir={args.workdir!r} must be an absolute path on a filesystem shared by "
                          f"all nodes (e.g. /shared/runs/x) or gs://BUCKET/PATH")
    check_config(args.config)


def main(argv=None) -> int:
    args, extra = parser().parse_known_args(argv)
    overrides = split_overrides(extra)
    validate(args)
    local = not args.workdir.startswith("gs://")
    directives = {
        "job-name": args.job_name, "nodes": str(args.nodes), "gpus-per-node": str(args.gpus_per_node),
        "ntasks-per-node": str(args.gpus_per_node if args.process_per_gpu else 1),
        "cpus-per-task": str(args.cpus_per_task), "time": args.time,
        **({"output": os.path.join(args.workdir, "slurm-%x-%j.out")} if local else {}),
        **({"partition": args.partition} if args.partition else {}),
        **({"account": args.account} if args.account else {}),
    }
    variables = {"JOB_ARGS": f"({shlex.join(job_flags(args.config, args.workdir, overrides))})",
                 "REPO_DIR": shlex.quote(REPO_ROOT),
                 **({"PYTHON": shlex.quote(args.python)} if args.python else {})}
    with open(TEMPLATE, encoding="utf-8") as f:
        script = render(f.read(), directives, variables)
    path = args.script or os.path.join(args.workdir if local else os.getcwd(), f"{args.job_name}.sbatch")
    sh = Runner(args.dry_run, retries=0)
    if args.dry_run:
        print(script, end="")
    else:
        for d in [os.path.dirname(os.path.abspath(path))] + ([args.workdir] if local else []):
            os.makedirs(d, exist_ok=True)  # SLURM cannot open --output in a missing directory
        with open(path, "w", encoding="utf-8") as f:
            f.write(script)
        sh.note(f"wrote {path}")
    sh.run(["sbatch", path], cwd=REPO_ROOT)
    return 0


if __name__ == "__main__":
    cli(main)
