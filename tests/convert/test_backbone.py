"""Released PyTorch weights -> copgen_jax: mapping, round trips, forward parity, errors.

The release's state dict is rebuilt here from the names and shapes of SPEC §4
(not from the converter's own table), and its forward pass is rebuilt with
torch.nn.functional from the SPEC's maths, so no release code is needed.
"""
import math
import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from flax import nnx, traverse_util  # noqa: E402

from configs import test as test_config  # noqa: E402
from copgen_jax import checkpoint  # noqa: E402
from copgen_jax import convert  # noqa: E402
from copgen_jax.convert import parity  # noqa: E402
from copgen_jax.trainers.backbone import BackboneTask  # noqa: E402
from copgen_jax.convert.backbone import rules_from_config  # noqa: E402
from copgen_jax.models.backbone import patchify  # noqa: E402
from copgen_jax.modalities import build_registry, registry_from_config  # noqa: E402
from copgen_jax.trainers.loop import Trainer  # noqa: E402
from tests.fixtures.release import release_state_dict  # noqa: E402


def reference_forward(sd, reg, d, heads, latents, timesteps):
    """The release's U-ViT (SPEC §4) in torch.nn.functional, straight from its state dict."""
    names = reg.names
    batch = latents[names[0]].shape[0]
    freqs = torch.exp(-math.log(10000.0) * torch.arange(d // 2, dtype=torch.float32) / (d // 2))
    tokens = []
    for n in names:
        args = timesteps[n].float()[:, None] * freqs[None]
        tokens.append(torch.cat([torch.cos(args), torch.sin(args)], -1)[:, None])
    for i, m in enumerate(reg):
        y = F.conv2d(latents[m.name], sd[f"patch_embeds.{i}.proj.weight"], sd[f"patch_embeds.{i}.proj.bias"],
                     stride=m.patch)
        tokens.append(y.flatten(2).transpose(1, 2))
    x = torch.cat(tokens, 1) + sd["pos_embed"]

    def ln(key, x):
        return F.layer_norm(x, (d,), sd[f"{key}.weight"], sd[f"{key}.bias"], eps=1e-5)

    def block(b, x, skip=None):
        if skip is not None:
            x = ln(f"{b}.norm1", F.linear(torch.cat([x, skip], -1), sd[f"{b}.skip_linear.weight"],
                                          sd[f"{b}.skip_linear.bias"]))
        qkv = F.linear(x, sd[f"{b}.attn.qkv.weight"]).reshape(batch, -1, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(batch, -1, d)
        x = ln(f"{b}.norm2", x + F.linear(a, sd[f"{b}.attn.proj.weight"], sd[f"{b}.attn.proj.bias"]))
        h = F.gelu(F.linear(x, sd[f"{b}.mlp.fc1.weight"], sd[f"{b}.mlp.fc1.bias"]))
        return ln(f"{b}.norm3", x + F.linear(h, sd[f"{b}.mlp.fc2.weight"], sd[f"{b}.mlp.fc2.bias"]))

    depth = len({k.split(".")[1] for k in sd if k.startswith("in_blocks.")})
    skips = []
    for j in range(depth):
        x = block(f"in_blocks.{j}", x)
        skips.append(x)
    x = block("mid_block", x)
    for j in range(depth):
        x = block(f"out_blocks.{j}", x, skips.pop())
    x = ln("norm", x)
    out, start = {}, len(names)
    for i, m in enumerate(reg):
        c, h, w = m.latent_shape
        p = m.patch
        y = F.linear(x[:, start:start + m.num_tokens], sd[f"decoder_preds.{i}.weight"], sd[f"decoder_preds.{i}.bias"])
        start += m.num_tokens
        out[m.name] = y.reshape(batch, h // p, w // p, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(batch, c, h, w)
    return out


@pytest.fixture(scope="module")
def tiny():
    cfg = test_config.get_config()
    reg = registry_from_config(cfg)
    sd = release_state_dict(reg, cfg.model.hidden, cfg.model.depth)
    return cfg, reg, sd


def numpy_sd(sd):
    return {k: v.numpy() for k, v in sd.items()}


def test_round_trip_is_exact(tiny):
    cfg, _, sd = tiny
    params = convert.convert_backbone(numpy_sd(sd), cfg)
    back = convert.to_torch_state_dict(params, cfg)
    assert sorted(back) == sorted(sd)
    for key, tensor in sd.items():
        assert torch.equal(back[key], tensor), key


def test_converted_run_matches_reference_forward(tiny, tmp_path):
    """pth -> run directory -> load_backbone equals the SPEC's forward on the same weights."""
    cfg, reg, sd = tiny
    torch.save(sd, tmp_path / "nnet_ema.pth")
    convert.convert_files(cfg, str(tmp_path / "nnet_ema.pth"), None, str(tmp_path / "run"))
    assert checkpoint.available_items(tmp_path / "run", 0) == {"params", "ema_params"}
    assert checkpoint.load_config(tmp_path / "run").model.hidden == cfg.model.hidden
    f = convert.load_backbone(tmp_path / "run")
    rng = np.random.default_rng(1)
    latents = {m.name: rng.standard_normal((2, *m.latent_shape)).astype(np.float32) for m in reg}
    timesteps = {m.name: np.array([0, 10 + 400 * i]) for i, m in enumerate(reg)}  # t = 0 included
    ours = f(latents, timesteps)
    with torch.no_grad():
        ref = reference_forward(sd, reg, cfg.model.hidden, cfg.model.heads,
                                {n: torch.from_numpy(v) for n, v in latents.items()},
                                {n: torch.from_numpy(v) for n, v in timesteps.items()})
    for name in reg.names:
        assert ours[name].shape == latents[name].shape
        assert parity.relative_error(ours[name], ref[name].numpy()) < 2e-5, name  # float32 round-off; --check-parity allows 1e-4


def test_training_loop_resumes_from_a_converted_run(tiny, tmp_path):
    """Step 0 holds params == ema_params and no optimizer state; the trainer restores it on its mesh."""
    cfg, reg, sd = tiny
    params = convert.convert_backbone(numpy_sd(sd), cfg)
    convert.write_run(tmp_path, cfg, params)
    trainer = Trainer(cfg, BackboneTask(cfg, reg))
    targets = {k: checkpoint.abstract_like(v) for k, v in trainer.arrays().items()}
    restored = checkpoint.restore(checkpoint.manager(tmp_path, async_save=False), 0, targets)
    assert restored["opt_state"] is None  # fine-tuning starts the optimizer fresh
    trainer.load(restored)
    expected = traverse_util.flatten_dict(params)
    for item in ("params", "ema_params"):
        got = traverse_util.flatten_dict(nnx.to_pure_dict(trainer.arrays()[item]))
        assert got.keys() == expected.keys()
        for path, value in expected.items():
            np.testing.assert_array_equal(np.asarray(got[path]), value, err_msg=f"{item} {path}")
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        convert.write_run(tmp_path, cfg, params)


def test_patch_embedding_equals_conv2d(tiny):
    cfg, reg, sd = tiny
    rules = {r.torch_key: r for r in rules_from_config(cfg, reg)}
    for i, m in enumerate(reg):
        weight, bias = sd[f"patch_embeds.{i}.proj.weight"], sd[f"patch_embeds.{i}.proj.bias"]
        kernel = rules[f"patch_embeds.{i}.proj.weight"].to_jax(weight.numpy())
        x = torch.randn(2, *m.latent_shape)
        ours = np.asarray(patchify(x.numpy(), m.patch)) @ kernel + bias.numpy()
        theirs = F.conv2d(x, weight, bias, stride=m.patch).flatten(2).transpose(1, 2)
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-5, atol=1e-5, err_msg=m.name)


def test_linear_layers_equal_torch(tiny):
    cfg, reg, sd = tiny
    d, heads = cfg.model.hidden, cfg.model.heads
    rules = {r.torch_key: r for r in rules_from_config(cfg, reg)}
    x = torch.randn(2, 5, d)
    # the fused qkv: (3D, D) -> (D, 3, heads, head_dim), then q/k/v and heads split in the release's order
    qkv = rules["in_blocks.0.attn.qkv.weight"].to_jax(sd["in_blocks.0.attn.qkv.weight"].numpy())
    ours = np.einsum("bld,dthk->tbhlk", x.numpy(), qkv)
    theirs = F.linear(x, sd["in_blocks.0.attn.qkv.weight"]).reshape(2, 5, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-5, atol=1e-5)
    # the output projection consumes heads in (H D) order
    proj = rules["in_blocks.0.attn.proj.weight"].to_jax(sd["in_blocks.0.attn.proj.weight"].numpy())
    ours = np.einsum("blhk,hkd->bld", x.numpy().reshape(2, 5, heads, d // heads), proj)
    np.testing.assert_allclose(ours, F.linear(x, sd["in_blocks.0.attn.proj.weight"]).numpy(), rtol=1e-5, atol=1e-5)
    for key in ("out_blocks.0.skip_linear.weight", "mid_block.mlp.fc1.weight", "decoder_preds.1.weight"):
        w = sd[key]
        x = torch.randn(3, w.shape[1])
        np.testing.assert_allclose(x.numpy() @ rules[key].to_jax(w.numpy()), F.linear(x, w).numpy(),
                                   rtol=1e-5, atol=1e-5, err_msg=key)


def test_corrupt_state_dicts_list_every_problem(tiny):
    cfg, _, sd = tiny
    bad = numpy_sd(sd)
    del bad["mid_block.norm2.bias"], bad["decoder_preds.2.weight"]
    bad["in_blocks.0.mlp.fc1.weight"] = bad["in_blocks.0.mlp.fc1.weight"].T
    bad["pos_embed"] = bad["pos_embed"][:, :-1]
    bad["time_embed.weight"] = np.zeros((4, 4), np.float32)
    with pytest.raises(convert.ConversionError) as err:
        convert.convert_backbone(bad, cfg, source="bad.pth")
    msg = str(err.value)
    assert "cannot convert bad.pth" in msg
    for line in ("2 missing key(s):", "decoder_preds.2.weight (16, 64)", "mid_block.norm2.bias (64,)",
                 "1 unexpected key(s):", "time_embed.weight (4, 4)", "2 mis-shaped key(s):",
                 "in_blocks.0.mlp.fc1.weight: shape (64, 256), expected (256, 64) (transposed?)",
                 "pos_embed: shape (1, 45, 64), expected (1, 46, 64)",
                 "the state dict has 45 tokens, the config's modalities give 46"):
        assert line in msg, (line, msg)


def test_wrong_modality_count_names_both_counts():
    cfg = test_config.get_config()
    # weights for all 12 official modalities, converted with the 3-modality test config
    official = build_registry(pixel_scale=4, downsample=4, patch=2, latent_channels=4)
    sd = {k: v.numpy() for k, v in release_state_dict(official, cfg.model.hidden, cfg.model.depth).items()}
    with pytest.raises(convert.ConversionError) as err:
        convert.convert_backbone(sd, cfg)
    msg = str(err.value)
    assert "the state dict holds 12 modalities (patch_embeds.0..11) but the config has 3" in msg
    # the extra modalities are listed as unexpected keys
    for key in ("patch_embeds.10.proj.weight (64, 4, 2, 2)", "patch_embeds.11.proj.weight (64, 1, 1, 1)",
                "decoder_preds.11.bias (1,)", "pos_embed: shape (1, 222, 64), expected (1, 46, 64)"):
        assert key in msg, (key, msg)


def test_wrapped_training_checkpoint_gets_a_hint(tiny):
    cfg, _, sd = tiny
    wrapped = {f"module.{k}": v.numpy() for k, v in sd.items()}
    with pytest.raises(convert.ConversionError, match="every key starts with 'module'"):
        convert.convert_backbone(wrapped, cfg)


def test_parity_without_release_says_how_to_get_it(tiny, tmp_path, monkeypatch, capsys):
    cfg, _, sd = tiny
    torch.save(sd, tmp_path / "nnet_ema.pth")
    monkeypatch.setitem(sys.modules, "libs.copgen_multi_post_ln", None)  # import fails even if installed
    assert parity.run(cfg, str(tmp_path / "nnet_ema.pth"), None) == 3
    err = capsys.readouterr().err
    assert "cannot import libs.copgen_multi_post_ln" in err and "PYTHONPATH=/path/to/COP-GEN" in err


def fake_release(reg, offset=0.0):
    """A stand-in for the release's ``libs.copgen_multi_post_ln`` running the SPEC reference."""
    class COPGEN:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

        def load_state_dict(self, sd, strict=True):
            self.sd = dict(sd)

        def eval(self):
            return self

        def __call__(self, imgs, t_imgs):
            kw = self.kwargs
            assert list(kw["modalities"]) == list(reg.names)  # the release's (sorted) order
            out = reference_forward(self.sd, reg, kw["embed_dim"], kw["num_heads"],
                                    dict(zip(reg.names, imgs)), dict(zip(reg.names, t_imgs)))
            return [out[n] + (offset if i == 1 else 0.0) for i, n in enumerate(reg.names)]

    return types.SimpleNamespace(COPGEN=COPGEN)


@pytest.mark.parametrize("offset,status", [(0.0, 0), (1e-2, 1)])
def test_parity_check_passes_only_within_tolerance(tiny, tmp_path, monkeypatch, capsys, offset, status):
    cfg, reg, sd = tiny
    torch.save(sd, tmp_path / "nnet_ema.pth")
    monkeypatch.setitem(sys.modules, "libs.copgen_multi_post_ln", fake_release(reg, offset))
    kwargs = parity.release_backbone_kwargs(cfg, reg)
    assert kwargs["patch_size"] == {m.name: m.patch for m in reg} and kwargs["embed_dim"] == cfg.model.hidden
    assert [kwargs["modalities"][n].modality_type for n in reg.names] == ["scalar", "image", "image"]
    assert parity.run(cfg, str(tmp_path / "nnet_ema.pth"), None, seeds=2) == status
    out = capsys.readouterr().out
    assert ("parity: PASS" if status == 0 else "parity: FAIL") in out
    line = next(line for line in out.splitlines() if line.strip().startswith(reg.names[1]))
    assert line.endswith("FAIL" if status else "ok"), out


def test_missing_file_and_non_state_dict(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        convert.load_torch_state_dict(tmp_path / "absent.pth")
    torch.save({"ema": {"w": torch.zeros(2)}, "step": 3}, tmp_path / "wrapped.pth")
    with pytest.raises(convert.ConversionError, match="not a flat state dict of tensors"):
        convert.load_torch_state_dict(tmp_path / "wrapped.pth")
