"""One source of config truth: copgen_jax.defaults holds every knob, configs only what differs."""
import ast
import importlib
import json
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from copgen_jax import checkpoint, defaults
from tests import ROOT

CONFIGS = sorted(p.stem for p in pathlib.Path(ROOT, "configs").glob("*.py") if p.stem != "__init__")


def config(name):
    return importlib.import_module(f"configs.{name}").get_config()


def test_every_config_is_known_to_the_defaults():
    assert {"base", "demo", "test", "tokenizer", "tokenizer_test", "tpu_v4"} <= set(CONFIGS)
    for name in CONFIGS:
        assert defaults.unknown_keys(config(name)) == [], name


def test_a_typo_in_a_config_is_an_error():
    cfg = config("demo")
    cfg.model.hiden = 64
    cfg.pipeline.tokenizer.model.norm_group = 4  # overrides of cfg.tokenizer are checked against it
    cfg.pipeline.tokenizer.per_modality.DEM_DEM.optim.lr_end = 1e-5
    cfg.modalities.per_modality.DEM_DEM = dict(downsample=2, patches=1)
    assert sorted(defaults.unknown_keys(cfg)) == [
        "modalities.per_modality.DEM_DEM.patches", "model.hiden",
        "pipeline.tokenizer.model.norm_group", "pipeline.tokenizer.per_modality.DEM_DEM.optim.lr_end"]
    with pytest.raises(ValueError, match="model.hiden"):
        defaults.check(cfg)


def test_the_entry_point_refuses_an_unknown_key(tmp_path):
    path = tmp_path / "typo.py"
    path.write_text("from configs import test\n\n\ndef get_config():\n"
                    "    c = test.get_config()\n    c.optim.warmup = 3\n    return c\n")
    env = {"PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "copgen_jax.main", f"--config={path}", "--describe"], cwd=ROOT,
                         env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "optim.warmup" in out.stderr


def _path(node, aliases):
    """``c.model.hidden`` -> ["model", "hidden"] when ``c`` is the config (or an alias of a section)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.insert(0, node.attr)
        node = node.value
    return aliases[node.id] + parts if isinstance(node, ast.Name) and node.id in aliases else None


def restated_defaults(source: str) -> list[str]:
    """Assignments in a config file of a literal equal to the default at that key."""
    ref, found = defaults.default_config().to_dict(), []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, ast.FunctionDef):
            continue
        aliases = {"c": []}
        for node in ast.walk(fn):
            if not isinstance(node, ast.Assign) or len(node.targets) != 1:
                continue
            target, value = node.targets[0], node.value
            if isinstance(target, ast.Name) and _path(value, aliases) is not None:
                aliases[target.id] = _path(value, aliases)
                continue
            pairs = (zip(target.elts, value.elts) if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple)
                     else [(target, value)])
            for t, v in pairs:
                path = _path(t, aliases)
                try:
                    literal = ast.literal_eval(v)
                except ValueError:
                    continue
                default = ref
                for key in path or ["<none>"]:
                    default = default.get(key, KeyError) if isinstance(default, dict) else KeyError
                if default is not KeyError and type(default) is type(literal) and default == literal:
                    found.append(".".join(path))
    return found


def test_configs_state_only_what_differs():
    assert restated_defaults("def get_config():\n    c.optim.lr = 2e-4\n    p = c.pipeline\n"
                             "    p.footprints, p.n_samples = 4, 9\n") == ["optim.lr", "pipeline.footprints"]
    for name in CONFIGS:
        assert restated_defaults(pathlib.Path(ROOT, "configs", f"{name}.py").read_text()) == [], name


def test_configs_do_not_import_training_code():
    code = ("import importlib, sys\n"
            f"for n in {CONFIGS!r}: importlib.import_module('configs.' + n).get_config()\n"
            "print(sorted(m for m in sys.modules if m.startswith(('copgen_jax.trainers', 'copgen_jax.models', 'jax'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_old_run_missing_keys_loads_with_the_defaults(tmp_path):
    saved = config("test").to_dict()
    for section in ("tokenizer", "baseline", "pipeline"):
        del saved[section]
    for section, key in (("optim", "schedule"), ("optim", "ema_warmup"), ("data", "num_examples"),
                         ("model", "ground_bias"), ("diffusion", "prediction")):
        del saved[section][key]
    saved["modalities"]["per_modality"] = {"DEM_DEM": {"downsample": 2}}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    cfg = checkpoint.load_config(tmp_path)
    fresh = defaults.default_config()
    assert cfg.model.hidden == 64 and cfg.train.steps == 20  # what the run saved wins
    assert cfg.modalities.names == ("3d_cartesian_lat_lon", "DEM_DEM", "S2L2A_B02_B03_B04_B08")  # tuples again
    assert cfg.modalities.per_modality.DEM_DEM.downsample == 2
    assert cfg.optim.schedule == fresh.optim.schedule and cfg.optim.ema_warmup == fresh.optim.ema_warmup
    assert cfg.data.num_examples == fresh.data.num_examples and cfg.model.ground_bias == fresh.model.ground_bias
    assert cfg.diffusion.prediction == "eps"
    assert cfg.tokenizer.to_dict() == fresh.tokenizer.to_dict()
    assert cfg.baseline.to_dict() == fresh.baseline.to_dict() and cfg.pipeline.to_dict() == fresh.pipeline.to_dict()
    assert defaults.unknown_keys(cfg) == []


def test_with_defaults_keeps_a_config_dicts_values():
    cfg = config("demo")
    merged = defaults.with_defaults(cfg)
    assert merged.to_dict() == cfg.to_dict()
    assert merged is not cfg and merged.pipeline.tokenizer.per_modality.DEM_DEM.train.steps == 3600


# Receivers that are config sections: a ``.get(key, fallback)`` on them is a second default.
_CONFIG_RECEIVER = re.compile(r"(^|\.)(cfg|tcfg|mc|optim|config)$|(^|\.)(cfg|tcfg)\.|"
                              r"\.(model|optim|train|data|mesh|diffusion|modalities|tokenizer|baseline|pipeline)$")


def test_no_config_is_read_with_a_fallback():
    found = []
    for path in pathlib.Path(ROOT, "copgen_jax").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                    and _CONFIG_RECEIVER.search(ast.unparse(node.func.value))):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert found == []


def test_the_tokenizer_flips_as_the_defaults_say():
    from copgen_jax import draws
    from copgen_jax.latents.store import build_model
    from copgen_jax.trainers.tokenizer import TokenizerTask
    cfg = config("tokenizer_test")
    assert cfg.tokenizer.hflip == defaults.default_config().tokenizer.hflip is True
    cfg.tokenizer.disc_layers = 0
    task = TokenizerTask(cfg)
    model = build_model(cfg)
    shape = (4, *task.modality.pixel_shape)
    ramp = np.broadcast_to(np.linspace(-1, 1, shape[-1], dtype=np.float32), shape)  # not mirror-symmetric
    batch = {"pixels": jax.numpy.asarray(ramp)}

    def loss(hflip):
        cfg.tokenizer.hflip = hflip
        return float(task.loss(model, batch, draws.example_keys(jax.random.key(1), 4), jax.numpy.int32(0))[0])

    # The default flips (some of) the batch: its loss differs from the unflipped one on the same draws.
    assert loss(True) != loss(False)
