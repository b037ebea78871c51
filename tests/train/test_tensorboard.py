"""MetricsWriter writes TensorBoard event files that decode to the logged scalars."""

import glob
import os
import struct

from tensorboardX.proto import event_pb2

from bitscale.train.metrics import MetricsWriter, read_metrics


def _events(logdir):
    out = []
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        data = open(path, "rb").read()
        i = 0
        while i < len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
            (n,) = struct.unpack("<Q", data[i:i + 8])
            payload = data[i + 12:i + 12 + n]
            i += 12 + n + 4
            ev = event_pb2.Event()
            ev.ParseFromString(payload)
            for v in ev.summary.value:
                out.append((ev.step, v.tag, v.simple_value))
    return out


def test_jsonl_and_tensorboard(tmp_path):
    w = MetricsWriter(str(tmp_path))
    w.write(1, {"loss": 2.5, "lr": 1e-3})
    w.write(10, {"loss": 1.25, "lr": 2e-3})
    w.close()
    rows = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert rows == [{"step": 1, "loss": 2.5, "lr": 1e-3}, {"step": 10, "loss": 1.25, "lr": 2e-3}]
    ev = _events(str(tmp_path / "tb"))
    assert (1, "loss", 2.5) in ev and (10, "loss", 1.25) in ev
    assert any(step == 10 and tag == "lr" and abs(val - 2e-3) < 1e-9 for step, tag, val in ev)
