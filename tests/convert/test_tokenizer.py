"""Released autoencoders -> copgen_jax tokenizers: names, round trips, forward parity, errors.

The release's state dict is built here from the Stable-Diffusion layout of
SPEC §3 and its forward pass with torch.nn.functional, so no release code is
needed. Width 32 keeps the release's 32-group GroupNorm valid.
"""
import copy
import shutil
import time

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from flax import nnx  # noqa: E402

from configs import tokenizer_test  # noqa: E402
from copgen_jax import checkpoint, parallel  # noqa: E402
from copgen_jax import convert  # noqa: E402
from copgen_jax.convert import parity  # noqa: E402
from copgen_jax.convert.rules import ConversionError  # noqa: E402
from copgen_jax.convert.tokenizer import (autoencoder_with, convert_tokenizer, convert_tokenizer_dir,  # noqa: E402
                                          find_tokenizer_files, tokenizer_rules, tokenizer_run_config,
                                          tokenizer_to_state_dict)
from copgen_jax.modalities import registry_from_config  # noqa: E402
from copgen_jax.latents.store import read_scale_factor  # noqa: E402
from copgen_jax.trainers.tokenizer import TokenizerTask  # noqa: E402

CH, CH_MULT, BLOCKS = 32, (1, 2, 2), 1


def release_names(cin, cout, ch, ch_mult, blocks, z):
    """(key, shape) of every tensor of the release's autoencoder."""
    out = []

    def conv(key, i, o, k):
        out.extend([(f"{key}.weight", (o, i, k, k)), (f"{key}.bias", (o,))])

    def norm(key, c):
        out.extend([(f"{key}.weight", (c,)), (f"{key}.bias", (c,))])

    def resnet(key, i, o):
        norm(f"{key}.norm1", i), conv(f"{key}.conv1", i, o, 3), norm(f"{key}.norm2", o), conv(f"{key}.conv2", o, o, 3)
        if i != o:
            conv(f"{key}.nin_shortcut", i, o, 1)

    def mid(key, c):
        resnet(f"{key}.block_1", c, c)
        norm(f"{key}.attn_1.norm", c)
        for part in "q", "k", "v", "proj_out":
            conv(f"{key}.attn_1.{part}", c, c, 1)
        resnet(f"{key}.block_2", c, c)

    widths = [ch * m for m in ch_mult]
    conv("encoder.conv_in", cin, ch, 3)
    prev = ch
    for i, w in enumerate(widths):
        for j in range(blocks):
            resnet(f"encoder.down.{i}.block.{j}", prev, w)
            prev = w
        if i < len(widths) - 1:
            conv(f"encoder.down.{i}.downsample.conv", w, w, 3)
    mid("encoder.mid", prev), norm("encoder.norm_out", prev), conv("encoder.conv_out", prev, 2 * z, 3)
    conv("quant_conv", 2 * z, 2 * z, 1), conv("post_quant_conv", z, z, 1)
    conv("decoder.conv_in", z, prev, 3), mid("decoder.mid", prev)
    for i in reversed(range(len(widths))):
        for j in range(blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", prev, widths[i])
            prev = widths[i]
        if i:
            conv(f"decoder.up.{i}.upsample.conv", prev, prev, 3)
    norm("decoder.norm_out", prev), conv("decoder.conv_out", prev, cout, 3)
    return out


def random_state_dict(names, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in names:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        x = torch.randn(shape, generator=g)
        sd[key] = (1.0 + 0.2 * x if "norm" in key and key.endswith("weight") else
                   0.1 * x if len(shape) == 1 else x / fan_in ** 0.5)
    return sd


def reference(sd, x=None, z=None):
    """The release's encoder (-> mean, logvar) or decoder, in torch.nn.functional."""
    def conv(h, key, stride=1, pad=None):
        w = sd[f"{key}.weight"]
        return F.conv2d(h, w, sd[f"{key}.bias"], stride, w.shape[-1] // 2 if pad is None else pad)

    def norm(h, key):
        return F.silu(F.group_norm(h, 32, sd[f"{key}.weight"], sd[f"{key}.bias"], eps=1e-6))

    def resnet(h, key):
        y = conv(norm(conv(norm(h, f"{key}.norm1"), f"{key}.conv1"), f"{key}.norm2"), f"{key}.conv2")
        return (conv(h, f"{key}.nin_shortcut") if f"{key}.nin_shortcut.weight" in sd else h) + y

    def mid(h, key):
        h = resnet(h, f"{key}.block_1")
        a = F.group_norm(h, 32, sd[f"{key}.attn_1.norm.weight"], sd[f"{key}.attn_1.norm.bias"], eps=1e-6)
        b, c, hh, ww = a.shape
        q, k, v = (conv(a, f"{key}.attn_1.{p}").reshape(b, c, hh * ww) for p in "qkv")
        w = torch.softmax(q.transpose(1, 2) @ k * c ** -0.5, dim=2)  # (b, query, key)
        h = h + conv((v @ w.transpose(1, 2)).reshape(b, c, hh, ww), f"{key}.attn_1.proj_out")
        return resnet(h, f"{key}.block_2")

    levels = len(CH_MULT)
    if x is not None:
        h = conv(x, "encoder.conv_in")
        for i in range(levels):
            for j in range(BLOCKS):
                h = resnet(h, f"encoder.down.{i}.block.{j}")
            if i < levels - 1:
                h = conv(F.pad(h, (0, 1, 0, 1)), f"encoder.down.{i}.downsample.conv", stride=2, pad=0)
        h = conv(norm(mid(h, "encoder.mid"), "encoder.norm_out"), "encoder.conv_out")
        return conv(h, "quant_conv").chunk(2, dim=1)
    h = mid(conv(conv(z, "post_quant_conv"), "decoder.conv_in"), "decoder.mid")
    for i in reversed(range(levels)):
        for j in range(BLOCKS + 1):
            h = resnet(h, f"decoder.up.{i}.block.{j}")
        if i:
            h = conv(F.interpolate(h, scale_factor=2.0, mode="nearest"), f"decoder.up.{i}.upsample.conv")
    return conv(norm(h, "decoder.norm_out"), "decoder.conv_out")


@pytest.fixture(scope="module")
def setup():
    cfg = tokenizer_test.get_config()
    cfg.tokenizer.ch, cfg.tokenizer.ch_mult, cfg.tokenizer.num_res_blocks = CH, CH_MULT, BLOCKS
    reg = registry_from_config(cfg)
    m = reg["S2L2A_B02_B03_B04_B08"]
    tcfg = tokenizer_run_config(cfg, m).tokenizer
    sd = random_state_dict(release_names(4, 4, CH, CH_MULT, BLOCKS, m.latent_channels))
    return cfg, reg, m, tcfg, sd


def test_official_layout_matches_stable_diffusion():
    rules = tokenizer_rules(3, 3, 128, (1, 2, 4, 4), 2, 4)
    assert sum(int(np.prod(r.torch_shape)) for r in rules) == 83_653_863  # the SD KL-f8 autoencoder
    expected = release_names(4, 4, 128, (1, 2, 4, 4), 2, 8)
    assert [(r.torch_key, r.torch_shape) for r in tokenizer_rules(4, 4, 128, (1, 2, 4, 4), 2, 8)] == expected
    assert len(expected) == 248


def test_round_trip_and_forward_parity(setup):
    _, _, m, tcfg, sd = setup
    params = convert_tokenizer({k: v.numpy() for k, v in sd.items()}, tcfg, m)
    back = tokenizer_to_state_dict(params, tcfg, m)
    assert sorted(back) == sorted(sd) and all(np.array_equal(back[k], sd[k].numpy()) for k in sd)
    ae = autoencoder_with(tcfg, m, params)
    x = torch.rand(2, *m.pixel_shape) * 2 - 1
    z = torch.randn(2, *m.latent_shape)
    mean, logvar = jax.jit(lambda x: ae.encode(x))(x.numpy())
    with torch.no_grad():
        ref_mean, ref_logvar = reference(sd, x=x)
        ref_pixels = reference(sd, z=z)
    assert mean.shape == (2, *m.latent_shape)
    assert parity.relative_error(mean, ref_mean.numpy()) < 1e-5
    assert parity.relative_error(logvar, ref_logvar.numpy()) < 1e-5
    pixels = jax.jit(lambda z: ae.decode(z))(z.numpy())
    assert parity.relative_error(pixels, ref_pixels.numpy()) < 1e-5


def test_corrupt_state_dicts_list_every_problem(setup):
    _, _, m, tcfg, sd = setup
    bad = {k: v.numpy() for k, v in sd.items()}
    del bad["encoder.down.1.block.0.nin_shortcut.weight"]
    bad["decoder.conv_in.weight"] = bad["decoder.conv_in.weight"].transpose(1, 0, 2, 3)
    bad["loss.logvar"] = np.zeros((), np.float32)  # a training checkpoint's loss state
    with pytest.raises(ConversionError) as err:
        convert_tokenizer(bad, tcfg, m, source="ae.pth")
    msg = str(err.value)
    for line in (f"cannot convert ae.pth into the {m.name} tokenizer",
                 "encoder.down.1.block.0.nin_shortcut.weight (64, 32, 1, 1)", "loss.logvar ()",
                 "decoder.conv_in.weight: shape (4, 64, 3, 3), expected (64, 4, 3, 3)"):
        assert line in msg, (line, msg)
    wrong_bands = random_state_dict(release_names(1, 1, CH, CH_MULT, BLOCKS, m.latent_channels))
    with pytest.raises(ConversionError, match=f"takes 1 input channels but {m.name} has 4"):
        convert_tokenizer({k: v.numpy() for k, v in wrong_bands.items()}, tcfg, m)


def test_directory_conversion_writes_a_tokenizer_run(setup, tmp_path):
    cfg, reg, m, tcfg, sd = setup
    with pytest.raises(ConversionError, match=r"(?s)DEM_DEM: no file .*S2L2A_B02_B03_B04_B08: no file"):
        find_tokenizer_files(reg, tmp_path)
    (tmp_path / m.name).mkdir()
    torch.save(sd, tmp_path / m.name / "model-50-ema.pth")
    cfg = copy.deepcopy(cfg)
    cfg.tokenizer.disc_layers = 0  # initialising a fresh discriminator only costs time here
    run = convert_tokenizer_dir(cfg, tmp_path, tmp_path / "out", names=[m.name])[m.name]
    assert run == tmp_path / "out" / "tokenizers" / m.name
    assert read_scale_factor(run)["scale_factor"] == pytest.approx(m.scale_factor)  # the official value
    run_cfg = checkpoint.load_config(run)
    assert run_cfg.task == "tokenizer" and run_cfg.tokenizer.modality == m.name
    # restore the EMA weights the way copgen_jax.latents.store.load_tokenizer does, into shapes only
    task = TokenizerTask(run_cfg)
    graphdef, state = nnx.split(parallel.abstract_model(lambda: task.create_model(nnx.Rngs(0))), nnx.Param)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), state)
    mgr = checkpoint.manager(run, async_save=False)
    restored = checkpoint.restore(mgr, 0, {"ema_params": target})["ema_params"]
    ae = nnx.merge(graphdef, restored).autoencoder
    x = torch.rand(2, *m.pixel_shape) * 2 - 1
    with torch.no_grad():
        ref_mean, _ = reference(sd, x=x)
    assert parity.relative_error(jax.jit(lambda x: ae.encode(x)[0])(x.numpy()), ref_mean.numpy()) < 1e-5


def test_files_are_all_checked_before_anything_is_written_and_reruns_resume(setup, tmp_path, capsys):
    from tests.fixtures.release import release_state_dict
    cfg, _, m, _, sd = setup
    cfg = copy.deepcopy(cfg)
    cfg.modalities.names = ("3d_cartesian_lat_lon", m.name)  # one tokenizer beside a tiny backbone
    cfg.model.hidden, cfg.model.depth, cfg.model.heads = 64, 2, 4
    cfg.tokenizer.disc_layers = 0
    reg = registry_from_config(cfg)
    torch.save(release_state_dict(reg, cfg.model.hidden, cfg.model.depth), tmp_path / "nnet_ema.pth")
    broken = dict(sd)
    del broken["decoder.mid.attn_1.q.bias"]
    torch.save(broken, tmp_path / f"{m.name}.pth")
    out = tmp_path / "run"
    args = (cfg, str(tmp_path / "nnet_ema.pth"), str(tmp_path), str(out))
    with pytest.raises(ConversionError, match=r"(?s)decoder.mid.attn_1.q.bias \(64,\).*nothing was written"):
        convert.convert_files(*args)
    assert not out.exists() or not any(out.iterdir())
    torch.save(sd, tmp_path / f"{m.name}.pth")
    convert.convert_files(*args)
    assert checkpoint.latest_step(out) == 0 and checkpoint.latest_step(out / "tokenizers" / m.name) == 0
    # interrupted before the backbone was written: the rerun converts only the backbone
    shutil.rmtree(out / "checkpoints")
    capsys.readouterr()
    convert.convert_files(*args)
    printed = capsys.readouterr().out
    assert f"tokenizer {m.name}: already converted" in printed and "[1/1] backbone" in printed
    assert checkpoint.latest_step(out) == 0
    # a changed file for an already converted item is refused rather than mixed in
    time.sleep(0.01)
    torch.save(release_state_dict(reg, cfg.model.hidden, cfg.model.depth, seed=1), tmp_path / "nnet_ema.pth")
    with pytest.raises(FileExistsError, match="did not come from these files"):
        convert.convert_files(*args)
