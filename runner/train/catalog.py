"""The model libraries asked what they offer, in a process of its own: the driver imports no framework.

    python -m runner.train.catalog ask < question.json   {"names": [libraries], "facts": [requests]}: each
                                                         library's names, and each zoo model built with its
                                                         new head: parameter counts, sizes, problem
    python -m runner.train.catalog fetch ARCH PATH       the library's ImageNet weights saved at PATH

Each answers one JSON document on stdout (what the libraries print goes to stderr). A torch and a Keras
model are never asked in one process: importing torchvision after TensorFlow crashes. runner.train.probe
is the driver's side: it starts these, and keeps their answers in the cache.
"""

import json
import os
import re
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runner.errors import UserError
from schemas import ModelSpec
from schemas.registry import model_ref

MIN_SIDE = 8  # the smallest dataset.image_size a spec takes
MAX_SIDE = 1024  # the largest
# Sides tried, in order, for the first one a model takes when the smallest does not fit (fixed-size ViTs).
USUAL_SIDES = (224, 256, 299, 384, 448, 512)
DOWNLOAD_TIMEOUT_S = 30
# keras.applications' own message for a too-small input: "Input size must be at least 75x75; Received ...".
_KERAS_AT_LEAST = re.compile(r"at least (\d+)x\1")


# --- names -------------------------------------------------------------------------------------------


def names(prefix: str) -> dict[str, Any]:
    """The library's model names; those with ImageNet weights; timm's names with a pretrained tag."""
    if prefix == "keras":
        from runner.train import keras_zoo

        every = keras_zoo.names()
        # Every keras.applications model takes weights="imagenet".
        return {"names": every, "imagenet": every, "tagged": []}
    from runner.train import torch_zoo

    every = torch_zoo.names(prefix)
    if prefix == "torchvision":
        import torchvision

        pretrained = [n for n in every if len(torchvision.models.get_model_weights(n)) > 0]
        return {"names": every, "imagenet": pretrained, "tagged": []}
    tagged = torch_zoo.timm_tagged()
    bases = {t.split(".")[0] for t in tagged}
    return {"names": every, "imagenet": [n for n in every if n in bases], "tagged": tagged}


# --- facts of one model ------------------------------------------------------------------------------


def smallest_side(takes: Callable[[int], bool], own: int | None = None) -> int | None:
    """The smallest image side `takes` accepts between MIN_SIDE and MAX_SIDE: MIN_SIDE itself, or found by
    bisection below the first usual side that works (a network that takes a side takes larger ones, up to a
    fixed-size one, which takes its own alone). None when no side tried works."""
    if takes(MIN_SIDE):
        return MIN_SIDE
    high = next((s for s in dict.fromkeys([*USUAL_SIDES, *([own] if own else [])]) if takes(s)), None)
    if high is None:
        return None
    low = MIN_SIDE  # does not take it
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if takes(mid) else (mid, high)
    return high


def _torch_facts(request: dict[str, Any]) -> dict[str, Any]:
    import torch

    from runner.train import torch_zoo

    arch, classes, size = request["arch"], request["classes"], request["image_size"]
    spec = ModelSpec(arch=arch, classifier_width=request["classifier_width"], freeze_backbone=request["frozen"])
    try:
        try:
            # On the meta device: the layers' shapes without their memory, so that a large model costs nothing.
            with torch.device("meta"):
                built = torch_zoo.build(spec, classes, None)
        except (NotImplementedError, RuntimeError):  # a model whose making computes on its weights: on the CPU
            built = torch_zoo.build(spec, classes, None)
    except UserError as e:
        return {"problem": str(e)}
    if spec.freeze_backbone:
        torch_zoo.freeze(built.model, built.head)
    total = sum(p.numel() for p in built.model.parameters())
    trainable = sum(p.numel() for p in built.model.parameters() if p.requires_grad)
    tried: dict[int, str] = {}

    def problem_at(side: int) -> str:
        if side not in tried:
            tried[side] = torch_zoo.output_problem(built.model, classes, side, arch)
        return tried[side]

    cfg = getattr(built.model, "pretrained_cfg", None) or {}  # timm: the size it was made for
    own = getattr(built.model, "image_size", None) or (cfg.get("input_size") or [None])[-1]
    smallest = smallest_side(lambda side: not problem_at(side), own if isinstance(own, int) else None)
    problem = problem_at(size)
    if problem and smallest is not None:
        problem = problem.replace(". Fix:", f"; the smallest side it takes is {smallest} px. Fix:", 1)
    return _facts(total, trainable, built.hidden_width, smallest, problem)


def _keras_facts(request: dict[str, Any]) -> dict[str, Any]:
    from runner.train import keras_zoo, tf_models

    arch, classes, size = request["arch"], request["classes"], request["image_size"]
    spec = ModelSpec(arch=arch, classifier_width=request["classifier_width"], freeze_backbone=request["frozen"])
    smallest: int | None = MIN_SIDE
    try:
        # Keras refuses a too-small input before it builds a layer, with the smallest size in its message.
        keras_zoo.build(ModelSpec(arch=arch), classes, MIN_SIDE, None)
    except UserError as e:
        found = _KERAS_AT_LEAST.search(str(e))
        smallest = int(found.group(1)) if found else None
    try:
        built = keras_zoo.build(spec, classes, size, None)  # without weights: the layers are all it needs
    except UserError as e:
        problem = str(e)
        if smallest is not None and "cannot be built for images" in problem:
            problem = problem.replace(". Fix:", f"; the smallest side it takes is {smallest} px. Fix:", 1)
        return {"problem": problem, "min_image_size": smallest}
    if spec.freeze_backbone:
        keras_zoo.freeze(built.model, built.head)
    trainable, total = tf_models.parameter_counts(built.model)
    return _facts(total, trainable, built.hidden_width, smallest, "")


def _facts(total: int, trainable: int, hidden: int | None, smallest: int | None, problem: str) -> dict[str, Any]:
    return {
        "total": int(total),
        "trainable": int(trainable),
        "hidden_width": hidden,
        "min_image_size": smallest,
        "problem": problem,
    }


def facts(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each request (arch, classes, classifier_width, frozen, image_size): the model's parameter counts
    with the new head (trainable: under freeze_backbone), the width of its hidden dense layers (None: it
    has none, classifier_width does not apply), the smallest image side it takes, and the problem of the
    spec ('' when it builds)."""
    out = []
    for request in requests:
        ref = model_ref(request["arch"])
        assert ref.zoo is not None
        try:
            out.append(_keras_facts(request) if ref.zoo.prefix == "keras" else _torch_facts(request))
        except Exception as e:  # the library failed, not the spec: this model goes unchecked, the others do not
            out.append({"unchecked": f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[-1][:200]}"})
    return out


# --- ImageNet weights --------------------------------------------------------------------------------


def fetch(arch: str, path: Path) -> dict[str, str]:
    """Download the library's ImageNet weights of `arch` (into the library's own cache, which the caller
    points into gridrun's: TORCH_HOME, HF_HOME, KERAS_HOME) and save them at `path` as gridrun loads them:
    the state dict of the library's ImageNet model, or Keras' .weights.h5."""
    ref = model_ref(arch)
    assert ref.zoo is not None
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # the libraries' downloads take no timeout of their own
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temporary name beside the file, then a rename: a reader never sees half a weights file.
    part = path.with_name(f".{os.getpid()}.part{ref.zoo.weights_suffix}")
    try:
        if ref.zoo.prefix == "keras":
            import keras

            getattr(keras.applications, ref.name)(weights="imagenet").save_weights(str(part))
        else:
            import torch

            if ref.zoo.prefix == "torchvision":
                import torchvision

                # Auxiliary classifiers come too: torch_zoo leaves them out of the model it loads into.
                model = torchvision.models.get_model(ref.name, weights="DEFAULT")
            else:
                import timm

                model = timm.create_model(ref.name, pretrained=True)
            torch.save(model.state_dict(), part)
        os.replace(part, path)
    except Exception as e:  # the library's own error, whatever it is: the caller applies the fallback or names the file
        return {"problem": f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[-1][:200]}"}
    finally:
        part.unlink(missing_ok=True)
    return {"saved": str(path)}


def main(argv: list[str]) -> int:
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever the libraries print, from Python or C, goes to stderr: stdout holds the answer
    sys.stdout = sys.stderr
    verb, *args = argv
    if verb == "ask":
        question = json.load(sys.stdin)
        answer: Any = {"names": {p: names(p) for p in question["names"]}, "facts": facts(question["facts"])}
    elif verb == "fetch":
        answer = fetch(args[0], Path(args[1]))
    else:
        print(f"unknown verb {verb!r}: ask or fetch", file=sys.stderr)
        return 2
    json.dump(answer, out)
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
