"""Every entry point reads its flags the same way: absl flags through copgen_jax.flagparse."""
import pathlib

import pytest
from absl import flags

from copgen_jax import flagparse
from tests import ROOT


def tool():
    fv = flagparse.new()
    flags.DEFINE_string("workdir", None, "run directory", flag_values=fv)
    flags.DEFINE_multi_string("generate", [], "modality (repeat)", flag_values=fv)
    flags.DEFINE_integer("n-samples", 4, "samples", lower_bound=1, flag_values=fv)
    flags.DEFINE_float("lat", None, "latitude", flag_values=fv)
    flags.mark_flag_as_required("workdir", flag_values=fv)
    return fv


def test_both_spellings_and_a_fresh_start_per_parse():
    fv = tool()
    a = flagparse.parse(fv, ["--workdir", "x", "--generate", "A", "--generate=B", "--n-samples=2", "--lat", "-33.9"],
                        prog="t")
    assert (a.workdir, a.generate, a.n_samples, a.lat) == ("x", ["A", "B"], 2, -33.9)
    b = flagparse.parse(fv, ["--workdir=y"], prog="t")  # nothing left over from the last parse
    assert (b.workdir, b.generate, b.n_samples, b.lat) == ("y", [], 4, None)


@pytest.mark.parametrize("argv, message", [([], "--workdir"), (["--workdir=x", "--n-samples=0"], "n-samples"),
                                           (["--workdir=x", "--nsamples=3"], "nsamples"),
                                           (["--workdir=x", "stray"], "unexpected arguments")])
def test_bad_flags_exit_with_the_usage(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        flagparse.parse(tool(), argv, prog="t")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: t [flags]") and message in err


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        flagparse.parse(tool(), ["--help"], prog="t", metavars={"generate": "NAME"})
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--generate NAME" in out and "--n-samples N_SAMPLES" in out


def test_no_entry_point_uses_argparse():
    users = [str(p.relative_to(ROOT)) for p in pathlib.Path(ROOT, "copgen_jax").rglob("*.py")
             if "argparse" in p.read_text()]
    assert users == []


def test_a_config_file_with_an_unknown_key_is_refused(tmp_path, capsys):
    from ml_collections import config_flags
    path = tmp_path / "typo.py"
    path.write_text("from configs import test\n\n\ndef get_config():\n"
                    "    c = test.get_config()\n    c.model.hiden = 3\n    return c\n")
    fv = flagparse.new()
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=fv)
    assert flagparse.parse(fv, ["--config", "configs/test.py"], prog="t").config.model.hidden == 64
    with pytest.raises(SystemExit):
        flagparse.parse(fv, [f"--config={path}"], prog="t")
    assert "model.hiden" in capsys.readouterr().err
