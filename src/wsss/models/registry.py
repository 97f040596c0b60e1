"""One file format for every network, and one loader that dispatches on its ``kind``.

A model file (``torch.save`` of a dict, loaded with ``weights_only=True``) holds::

    format       "wsss-model"
    version      1
    kind         which network: a key of MODELS ("cam", "affinity", "seg", "wsfcn")
    arch         what rebuilds the network: backbone, output_stride and the kind's own keys
    label_names  the name of each output channel (the dataset's labels for "affinity"; the
                 mask channels, background first where there is one, for "wsfcn")
    state_dict   the weights
    provenance   fingerprint of the settings and inputs, epochs, settings, written (UTC)
    fingerprint  :func:`weights_fingerprint` of kind, label names and weights (files written
                 before it was added lack it; the loader computes it from the weights
                 either way, so it always describes what is loaded)

The maps a model writes carry its fingerprint (:mod:`wsss.data.store`), so that the next stage
can tell which model wrote them.

A network module registers its kind in :data:`MODELS` with a builder
``from_arch(arch: dict, num_labels: int) -> nn.Module`` (random weights; the file's fill
them).
"""

from __future__ import annotations

import datetime
import hashlib
import importlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from wsss.core.atomic import save_torch

FORMAT = "wsss-model"
VERSION = 1
KEYS = ("format", "version", "kind", "arch", "label_names", "state_dict")

# kind -> module whose ``from_arch`` builds the network.
MODELS = {
    "cam": "wsss.models.cam",
    "affinity": "wsss.models.affinitynet",
    "seg": "wsss.models.deeplab",
    "wsfcn": "wsss.models.wsfcn",
}


class ModelFileError(ValueError):
    """A model file that cannot be used: unreadable, of another kind, version or shape."""


@dataclass
class LoadedModel:
    """A network rebuilt from its file, in eval mode, with what the file says of it."""

    model: nn.Module
    kind: str
    arch: dict
    label_names: list[str]
    provenance: dict = field(default_factory=dict)
    fingerprint: str = ""


def weights_fingerprint(kind: str, label_names: Sequence[str], state_dict: dict) -> str:
    """A short hash (16 hex digits) of a network's kind, label names and weights (names,
    dtypes, shapes and bytes, in name order): two model files share it exactly when they
    hold the same network."""
    digest = hashlib.sha256(json.dumps([kind, list(label_names)]).encode())
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def check_labels(
    path: str | os.PathLike[str], model_labels: Sequence[str], expected: Sequence[str], source: str
) -> None:
    """Refuse a model whose label names differ from those of ``source`` (the manifest the
    stage runs on): its outputs would be mislabelled."""
    if list(model_labels) != list(expected):
        raise ModelFileError(
            f"{path}: the model was trained on the labels {list(model_labels)}, but {source} "
            f"has {list(expected)}; use a model trained on this dataset"
        )


def save_model(
    path: str | os.PathLike[str],
    model: nn.Module,
    kind: str,
    arch: dict,
    label_names: Sequence[str],
    **provenance: object,
) -> None:
    """Write ``model`` (moved to the CPU) as a model file, atomically."""
    if kind not in MODELS:
        raise ValueError(f"unknown model kind '{kind}' (known: {', '.join(MODELS)})")
    written = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    state_dict = {k: v.cpu() for k, v in model.state_dict().items()}
    save_torch(
        path,
        {
            "format": FORMAT,
            "version": VERSION,
            "kind": kind,
            "arch": dict(arch),
            "label_names": list(label_names),
            "state_dict": state_dict,
            "provenance": {**provenance, "written": written},
            "fingerprint": weights_fingerprint(kind, label_names, state_dict),
        },
    )


def _reason(err: Exception) -> str:
    """One line saying why torch failed: the unpickler's cause of a refused weights-only
    load (not torch's advice to load unsafely), else the first line with its first detail
    (``Error(s) in loading state_dict for X:`` is followed by what did not fit)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            cause = line.split("WeightsUnpickler error:", 1)[1].strip()
            cause = cause or (lines[i + 1] if i + 1 < len(lines) else "")
            return f"a weights-only load refuses it: {cause.split('. ')[0].rstrip('.')}"
    if not lines:
        return type(err).__name__
    if lines[0].endswith(":") and len(lines) > 1:
        return f"{lines[0]} {lines[1]}"
    return lines[0]


def read_model_file(path: str | os.PathLike[str]) -> dict:
    """The checked contents of a model file (weights not yet in a network); its
    ``fingerprint`` computed from the weights (:func:`weights_fingerprint`)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # torch raises several types for a bad or unsafe file
        raise ModelFileError(f"{path}: not a readable model file ({_reason(err)})") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a {FORMAT} file (no 'format: {FORMAT}' entry)")
    if data.get("version") != VERSION:
        raise ModelFileError(
            f"{path}: model file version {data.get('version')!r}; this toolkit reads {VERSION}"
        )
    missing = [k for k in KEYS if k not in data]
    if missing:
        raise ModelFileError(f"{path}: model file lacks {', '.join(missing)}")
    if data["kind"] not in MODELS:
        raise ModelFileError(
            f"{path}: unknown model kind '{data['kind']}' (known: {', '.join(MODELS)})"
        )
    if not isinstance(data["state_dict"], dict):
        raise ModelFileError(f"{path}: its state_dict is not a dict of weights")
    try:
        data["fingerprint"] = weights_fingerprint(
            data["kind"], data["label_names"], data["state_dict"]
        )
    except (AttributeError, TypeError, RuntimeError) as err:
        raise ModelFileError(f"{path}: its weights are not tensors ({_reason(err)})") from err
    return data


def load_model(
    path: str | os.PathLike[str],
    kind: str | Sequence[str] | None = None,
    device: torch.device | str = "cpu",
) -> LoadedModel:
    """Rebuild the network of a model file on ``device``, in eval mode.

    ``kind``: the kind (or kinds) the caller can use; another kind is refused with a
    message that says what the file holds.
    """
    data = read_model_file(path)
    wanted = (kind,) if isinstance(kind, str) else tuple(kind or ())
    if wanted and data["kind"] not in wanted:
        raise ModelFileError(
            f"{path}: a '{data['kind']}' model, but a {' or '.join(map(repr, wanted))} "
            "model is needed here"
        )
    builder = importlib.import_module(MODELS[data["kind"]]).from_arch
    try:
        model = builder(data["arch"], len(data["label_names"]))
        model.load_state_dict(data["state_dict"])
    except (KeyError, TypeError, RuntimeError, ValueError) as err:
        raise ModelFileError(
            f"{path}: the weights do not fit a '{data['kind']}' network with arch "
            f"{data['arch']} ({type(err).__name__}: {_reason(err)})"
        ) from err
    return LoadedModel(
        model.to(device).eval(),
        data["kind"],
        data["arch"],
        list(data["label_names"]),
        data.get("provenance", {}),
        data["fingerprint"],
    )
