"""What a finished run adds to its TensorBoard folder: the confusion matrix as an image, the resolved
spec and the per-class accuracy as text.

Runs inside the framework images, which install only the worker's dependencies (pydantic, numpy,
scikit-learn, Pillow, TensorBoard): the heatmap is drawn with Pillow, not matplotlib.
"""

import io
import json
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from runner.store.layout import JobPaths
from runner.train.tbwriter import TBWriter
from schemas import RunResult

TAG_CONFUSION = "eval/confusion_matrix"
TAG_SPEC = "run/spec"
TAG_PER_CLASS = "eval/per_class_accuracy"

# Matplotlib's "Blues" at five stops: white for an empty cell, dark blue for the whole row.
_BLUES = np.array([[247, 251, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]], dtype=float)
_INK = (36, 41, 47)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _blues(share: np.ndarray) -> np.ndarray:
    """Colours (..., 3) uint8 for shares in [0, 1]."""
    pos = np.clip(share, 0, 1) * (len(_BLUES) - 1)
    low = np.floor(pos).astype(int).clip(0, len(_BLUES) - 2)
    frac = (pos - low)[..., None]
    return (_BLUES[low] * (1 - frac) + _BLUES[low + 1] * frac).round().astype(np.uint8)


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: Any) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return int(right - left), int(bottom - top)


def _put(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font: Any, fill: Any, align: str = "c") -> None:
    """Text centred vertically on xy; horizontally centred ("c") or ending at x ("r").

    Placed by its measured box rather than by anchor, which bitmap fonts do not support.
    """
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = xy[0] - (left + right) / 2 if align == "c" else xy[0] - right
    draw.text((x, xy[1] - (top + bottom) / 2), text, fill=fill, font=font)


def _upright(text: str, font: Any) -> Image.Image:
    """A mask of the text turned 90 degrees, reading upwards."""
    scratch = ImageDraw.Draw(Image.new("L", (1, 1)))
    left, top, right, bottom = scratch.textbbox((0, 0), text, font=font)
    strip = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(strip).text((1 - left, 1 - top), text, fill=255, font=font)
    return strip.rotate(90, expand=True)


def confusion_png(matrix: list[list[int]], names: list[str], title: str = "") -> tuple[bytes, int, int]:
    """A heatmap of the confusion matrix as PNG bytes, with its height and width.

    Rows are true classes, columns predicted ones; the colour is the share of the row (so rare
    classes read like common ones), the number the count.
    """
    cm = np.asarray(matrix, dtype=np.int64).reshape(len(names), len(names))
    n = len(names)
    cell = int(np.clip(520 // max(n, 1), 6, 48))
    label_font, count_font, title_font = _font(12), _font(max(8, min(13, cell // 3))), _font(14)
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    labels = n <= 60 and cell >= 8
    label_w = max((_text_size(scratch, s, label_font)[0] for s in names), default=0) + 8 if labels else 0
    line_h = _text_size(scratch, "Hg", label_font)[1]
    left = 24 + line_h + label_w
    top = 34 if title else 12
    bottom = 24 + line_h + label_w
    width, height = left + n * cell + 16, top + n * cell + bottom
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)

    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    cells = np.repeat(np.repeat(_blues(share), cell, axis=0), cell, axis=1)
    image.paste(Image.fromarray(cells, "RGB"), (left, top))
    draw.rectangle((left - 1, top - 1, left + n * cell, top + n * cell), outline=(175, 184, 193))
    if cell >= 18 and n <= 40:
        for i in range(n):
            for j in range(n):
                colour = "white" if share[i, j] > 0.55 else _INK
                centre = (left + (j + 0.5) * cell, top + (i + 0.5) * cell)
                _put(draw, centre, str(int(cm[i, j])), count_font, colour)
    if labels:
        for i, name in enumerate(names):
            _put(draw, (left - 6, top + (i + 0.5) * cell), name, label_font, _INK, align="r")
            # Column labels run upwards, as on a chart's x axis.
            mask = _upright(name, label_font)
            x = left + i * cell + (cell - mask.width) // 2
            image.paste(Image.new("RGB", mask.size, _INK), (x, top + n * cell + 6), mask)
    _put(draw, (left + n * cell / 2, height - 8 - line_h / 2), "predicted", label_font, _INK)
    mask = _upright("true", label_font)
    image.paste(Image.new("RGB", mask.size, _INK), (8, top + (n * cell - mask.height) // 2), mask)
    if title:
        _put(draw, (left + n * cell / 2, 17), title, title_font, _INK)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue(), height, width


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [kv for key, item in value.items() for kv in _flatten(item, f"{prefix}{key}.")]
    return [(prefix.rstrip("."), value)]


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def spec_markdown(result: RunResult) -> str:
    """The resolved spec as a Markdown table, with the spec hash and any declared substitute."""
    lines = [
        f"**{result.suite}/{result.job}**, spec hash `{result.spec_hash}`",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    for key, value in _flatten(result.spec.model_dump(mode="json")):
        shown = value if isinstance(value, str) else json.dumps(value)
        lines.append(f"| {_md(key)} | {_md(str(shown))} |")
    if result.substitutions:
        lines += ["", "**Substitutes used**", "", "| kind | wanted | used | reason |", "|---|---|---|---|"]
        lines += [
            f"| {_md(s.kind)} | {_md(s.wanted)} | {_md(s.used)} | {_md(s.reason)} |" for s in result.substitutions
        ]
    return "\n".join(lines)


def per_class_markdown(result: RunResult) -> str:
    lines = ["| class | test accuracy | test images |", "|---|---:|---:|"]
    lines += [f"| {_md(c.name)} | {c.accuracy:.2%} | {c.support} |" for c in result.per_class_accuracy]
    return "\n".join(lines)


def write_run_extras(paths: JobPaths, result: RunResult) -> None:
    """Add the confusion matrix image, the spec and the per-class accuracy to the run's TensorBoard folder.

    Written at the last epoch's step, next to the run's final scalars.
    """
    step = result.epochs[-1].epoch if result.epochs else 0
    title = f"{result.suite}/{result.job}: confusion matrix (test)"
    png, height, width = confusion_png(result.confusion_matrix, result.class_names, title)
    writer = TBWriter(paths.tb)
    try:
        writer.image_png(TAG_CONFUSION, png, height, width, step)
        writer.text(TAG_SPEC, spec_markdown(result), step)
        writer.text(TAG_PER_CLASS, per_class_markdown(result), step)
    finally:
        writer.close()
