"""The compile-time report: memory per device and collectives of the real step, nothing allocated."""
import jax
import pytest

from configs import test as test_config
from copgen_jax.trainers import compiled
from copgen_jax.trainers.backbone import BackboneTask


def report(**overrides):
    cfg = test_config.get_config()
    cfg.mesh.data, cfg.mesh.fsdp = -1, 4  # 2 x 4 on the suite's 8 host devices
    cfg.train.global_batch = 32
    for key, value in overrides.items():
        section, name = key.split(".")
        cfg[section][name] = value
    return compiled.step_report(cfg, BackboneTask(cfg))


@pytest.fixture(scope="module")
def whole():
    return report()


def test_report_of_an_fsdp_step(whole):
    out = whole
    assert out["devices"] == jax.device_count() and out["per_device_batch"] == 32 // jax.device_count()
    assert out["peak_bytes_per_device"] >= out["temp_bytes_per_device"] > 0
    assert out["argument_bytes_per_device"] > 0
    # FSDP gathers each layer's weights for the forward and reduces the gradients.
    assert out["collectives"]["all-gather"]["count"] > 0 and out["collectives"]["all-gather"]["bytes"] > 0
    reductions = sum(out["collectives"].get(k, {}).get("count", 0) for k in ("all-reduce", "reduce-scatter"))
    assert reductions > 0


def test_microbatches_cut_the_temporaries(whole):
    split = report(**{"train.microbatches": 4})
    assert split["examples_per_device_at_once"] == whole["per_device_batch"] // 4
    assert split["temp_bytes_per_device"] < 0.6 * whole["temp_bytes_per_device"]


def test_collectives_are_read_from_hlo_text():
    hlo = """
  %all-reduce.1 = (f32[1024,16]{1,0}, f32[8]{0}) all-reduce(%a, %b), replica_groups={{0,1}}, /*index=5*/to_apply=%sum
  %ag = bf16[4,256]{1,0} all-gather(%c), dimensions={0}
  %ags = (bf16[2]{0}, bf16[4]{0}) all-gather-start(%d)
  %agd = bf16[4]{0} all-gather-done(%ags)
  %rs.2 = f32[64]{0} reduce-scatter(%e), dimensions={0}
  %x = f32[3]{0} add(%f, %g)
"""
    assert compiled.collectives(hlo) == {
        "all-reduce": {"count": 1, "bytes": 1024 * 16 * 4 + 8 * 4},
        "all-gather": {"count": 2, "bytes": 4 * 256 * 2 + (2 + 4) * 2},
        "reduce-scatter": {"count": 1, "bytes": 64 * 4}}


def test_unshardable_config_is_refused_before_compiling():
    with pytest.raises(ValueError, match="cannot be split into 3 micro-batches"):
        report(**{"train.microbatches": 3})
