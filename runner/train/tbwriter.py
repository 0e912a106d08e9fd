"""TensorBoard event files through TensorBoard's own writer and protos, framework-neutral.

Both trainers write through this module, so their runs carry identical tags and overlay in
one TensorBoard.
"""

import sys
import time
import types
from pathlib import Path
from typing import Any

# TensorBoard's file I/O uses TensorFlow's gfile whenever TensorFlow is installed: a TF import
# (seconds, and hundreds of MB) in every PyTorch worker. This is TensorBoard's own switch
# (tensorboard/compat:no_tensorflow) to its built-in stub, which writes local files the same way.
sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))

import numpy as np  # noqa: E402
from tensorboard.compat.proto.event_pb2 import Event  # noqa: E402
from tensorboard.compat.proto.summary_pb2 import Summary  # noqa: E402
from tensorboard.plugins.hparams import summary_v2 as hparams_summary  # noqa: E402
from tensorboard.plugins.text import metadata as text_metadata  # noqa: E402
from tensorboard.summary.writer.event_file_writer import EventFileWriter  # noqa: E402
from tensorboard.util import tensor_util  # noqa: E402

from runner.train.common import TAGS  # noqa: E402
from schemas import EpochRecord  # noqa: E402


class TBWriter:
    """Writes scalars, text, images and hyper-parameters into one run folder."""

    def __init__(self, logdir: Path) -> None:
        Path(logdir).mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(logdir))

    def _add(self, summary: Summary, step: int) -> None:
        self._writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._add(Summary(value=[Summary.Value(tag=tag, simple_value=float(value))]), step)

    def epoch(self, record: EpochRecord) -> None:
        """Every per-epoch scalar under its shared tag."""
        values = record.model_dump()
        for key, tag in TAGS.items():
            self.scalar(tag, values[key], record.epoch)
        self.flush()

    def text(self, tag: str, markdown: str, step: int = 0) -> None:
        tensor = tensor_util.make_tensor_proto(np.array(markdown, dtype=object))
        meta = text_metadata.create_summary_metadata(display_name=tag, description="")
        self._add(Summary(value=[Summary.Value(tag=tag, metadata=meta, tensor=tensor)]), step)

    def image_png(self, tag: str, png: bytes, height: int, width: int, step: int = 0) -> None:
        image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
        self._add(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def hparams(self, values: dict[str, Any]) -> None:
        """The run's hyper-parameters for the HParams view."""
        self._add(hparams_summary.hparams_pb(values), 0)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
