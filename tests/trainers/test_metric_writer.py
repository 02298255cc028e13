"""MetricLogger: scalars and throughput into TensorBoard event files, local and on gs:// (a fake GCS)."""
import numpy as np
import pytest
from tensorboardX.proto.event_pb2 import Event

from copgen_jax import storage
from copgen_jax.data.tfrecord import read_records
from copgen_jax.trainers.metric_writer import MetricLogger
from tests.fixtures.fake_gcs import fake_gcs  # noqa: F401 - the fixture


def _scalars(logdir) -> dict:
    (path,) = storage.glob(f"{logdir}/tensorboard/events.out.tfevents.*")
    out = {}
    for record in read_records(path):  # CRC-checked TFRecords of Event protos
        event = Event.FromString(record)
        for v in event.summary.value:
            out[(v.tag, event.step)] = v.simple_value
    return out


@pytest.mark.parametrize("where", ["local", "gs"])
def test_scalars_read_back(where, tmp_path, request):
    workdir = str(tmp_path / "run") if where == "local" else request.getfixturevalue("fake_gcs").uri + "/run"
    logger = MetricLogger(workdir, global_batch=8)
    values = logger.write(1, {"loss": np.float32(0.5), "per": {"a": 1.0}})
    assert values == {"loss": 0.5, "per/a": 1.0}
    logger.write(3, {"loss": np.float32(0.25), "per": {"a": 2.0}})
    logger.close()
    scalars = _scalars(workdir)
    assert scalars[("loss", 1)] == 0.5 and scalars[("loss", 3)] == 0.25 and scalars[("per/a", 3)] == 2.0
    assert scalars[("examples_per_s", 3)] == pytest.approx(8 * scalars[("steps_per_s", 3)], rel=1e-5)


def test_non_finite_metric_names_step_and_key(tmp_path):
    logger = MetricLogger(str(tmp_path), global_batch=1)
    with pytest.raises(FloatingPointError, match="step 2: metric loss is nan"):
        logger.write(2, {"loss": np.float32("nan")})
    logger.close()
