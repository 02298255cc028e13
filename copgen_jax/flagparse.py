"""Command-line flags of the entry points: absl flags, ``ml_collections.config_flags`` for configs.

Each tool defines its flags on its own ``absl.flags.FlagValues`` (``new()``), so several tools
can live in one process (tests, notebooks), and reads them with ``parse()``: a namespace with
one attribute per flag (``--n-samples`` -> ``n_samples``). ``--flag=value`` and ``--flag value``
both work; a bad or missing flag, or a config file with a key the defaults do not declare,
prints the usage and exits with status 2; ``--help`` exits with 0.
"""
from __future__ import annotations

import sys
import types

import ml_collections
from absl import flags

from copgen_jax import defaults

HELP = ("-h", "--help", "-help", "--helpfull", "--helpshort")


def new() -> flags.FlagValues:
    return flags.FlagValues()


def usage(flag_values: flags.FlagValues, prog: str, description: str = "", metavars: dict | None = None) -> str:
    """``usage: prog [flags]``, the description and one line per flag (``--name METAVAR  help``)."""
    metavars = metavars or {}
    lines = [f"usage: {prog} [flags]", ""] + ([description, ""] if description else [])
    for flag in _own(flag_values):
        meta = "" if flag.boolean else " " + metavars.get(flag.name, flag.name.replace("-", "_").upper())
        default = "" if flag.default in (None, "", []) or flag.boolean else f" (default: {flag.default_as_str})"
        lines.append(f"  --{flag.name}{meta}  {flag.help}{default}")
    return "\n".join(lines)


def _own(flag_values: flags.FlagValues) -> list:
    seen, out = set(), []
    for module_flags in flag_values.flags_by_module_dict().values():
        for flag in module_flags:
            if flag.name not in seen:
                seen.add(flag.name)
                out.append(flag)
    return out


def parse(flag_values: flags.FlagValues, argv=None, *, prog: str, description: str = "",
          metavars: dict | None = None) -> types.SimpleNamespace:
    """Parse ``argv`` (the arguments after the program name; default ``sys.argv[1:]``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in HELP for a in argv):
        print(usage(flag_values, prog, description, metavars))
        raise SystemExit(0)
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # Grain reads the global absl flags and refuses unparsed ones
    flag_values.unparse_flags()
    try:
        rest = flag_values([prog, *argv])
    except flags.Error as e:
        fail(flag_values, prog, str(e), metavars)
    if len(rest) > 1:
        fail(flag_values, prog, f"unexpected arguments {rest[1:]}", metavars)
    values = {f.name.replace("-", "_"): f.value for f in _own(flag_values)}
    for name, value in values.items():
        if isinstance(value, ml_collections.ConfigDict):
            try:
                defaults.check(value)  # a config file's typo'd key is an error, as for copgen_jax.main
            except ValueError as e:
                fail(flag_values, prog, f"--{name}: {e}", metavars)
    return types.SimpleNamespace(**values)


def fail(flag_values: flags.FlagValues, prog: str, message: str, metavars: dict | None = None):
    """Print the usage and ``message`` to stderr; exit with status 2 (as for any bad flag)."""
    print(usage(flag_values, prog, metavars=metavars), file=sys.stderr)
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)
