"""Human-readable summaries of the toolkit's files (``wsss inspect FILE``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def describe(path: str | os.PathLike[str], limit: int = 5) -> str:
    """A few lines on what ``path`` holds: maps (.h5), metrics or manifest (.json),
    model or training state (.pt), label map (.png)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return _maps(path, limit)
    if suffix == ".json":
        return _json(path, limit)
    if suffix in (".pt", ".pth"):
        return _torch(path)
    if suffix == ".png":
        return _png(path)
    raise ValueError(f"{path}: unknown file type '{suffix}'")


def _maps(path: Path, limit: int) -> str:
    """The shard's summary, after reading every image of it (:func:`wsss.data.store.verify`): a
    damaged shard is an error that names the file and the image, not a summary."""
    from wsss.data.store import MapsReader, verify

    verify(path)
    with MapsReader([path]) as reader:
        f = reader.files[0]
        lines = [
            f"{path}: {reader.kind} maps, shard {f.attrs['shard'] + 1}/{f.attrs['num_shards']}, "
            f"{len(reader.ids())} images, all readable",
            f"labels ({'with' if reader.has_background else 'no'} background): "
            + ", ".join(reader.label_names),
            f"written by the model {reader.model or '? (not recorded)'}"
            + (f" from the CAMs of the model {reader.source}" if reader.source else ""),
        ]
        names = reader.label_names[1:] if reader.has_background else reader.label_names
        for image_id in reader.ids()[:limit]:
            item = reader[image_id]
            classes = ", ".join(
                f"{names[c]} (max {m.max():.2f}, mean {m.mean():.3f})"
                for c, m in zip(item.classes, item.maps)
            )
            lines.append(f"  {image_id}: {item.maps.shape[1]}x{item.maps.shape[2]} px, {classes}")
        if len(reader.ids()) > limit:
            lines.append(f"  ... {len(reader.ids()) - limit} more")
    return "\n".join(lines)


def _json(path: Path, limit: int) -> str:
    data = json.loads(path.read_text())
    if "miou" in data:
        lines = [
            f"{path}: {data.get('stage', '?')} on '{data.get('split', '?')}', "
            f"{data.get('num_images', '?')} images: mIoU {data['miou']:.2f}"
        ]
        if data.get("best"):
            lines.append(f"best {data['best']}")
        if "floor" in data:
            lines.append(f"trivial floor mIoU {data['floor']['miou']:.2f}")
        per_class = sorted((v, k) for k, v in data.get("per_class", {}).items() if v is not None)
        lines.append("lowest IoU: " + ", ".join(f"{k} {v:.1f}" for v, k in per_class[:limit]))
        return "\n".join(lines)
    if "splits" in data:
        splits = ", ".join(f"{k} ({len(v)} images)" for k, v in data["splits"].items())
        return (
            f"{path}: dataset manifest '{data['name']}', {len(data['classes'])} classes"
            f"{' + background' if data['has_background'] else ''}; splits {splits}"
        )
    return json.dumps(data, indent=2)[:2000]


def _torch(path: Path) -> str:
    import torch

    from wsss.models.registry import FORMAT, read_model_file

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a bad or unsafe file
        raise ValueError(f"{path}: not a readable torch file ({type(err).__name__})") from err
    if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:
        data = read_model_file(path)
        values = sum(v.numel() for v in data["state_dict"].values() if v.is_floating_point())
        prov = data.get("provenance", {})
        return "\n".join(
            [
                f"{path}: '{data['kind']}' model (format version {data['version']}), "
                f"{values / 1e6:.2f} M values",
                f"arch: {data['arch']}",
                f"labels ({len(data['label_names'])}): " + ", ".join(data["label_names"]),
                f"trained {prov.get('epochs', '?')} epochs; written {prov.get('written', '?')}; "
                f"settings fingerprint {prov.get('fingerprint', '?')}",
                f"model fingerprint {data['fingerprint']} (kind, labels and weights)",
            ]
        )
    if isinstance(ckpt, dict) and "epoch" in ckpt:
        return f"{path}: training state after epoch {ckpt['epoch']}"
    keys = list(ckpt)[:10] if isinstance(ckpt, dict) else []
    return f"{path}: {type(ckpt).__name__} with keys {keys}"


def _png(path: Path) -> str:
    from wsss.data.manifest import read_mask

    mask = read_mask(path)
    values, counts = np.unique(mask, return_counts=True)
    share = ", ".join(f"{v}: {100 * c / mask.size:.1f}%" for v, c in zip(values, counts))
    return f"{path}: label map {mask.shape[1]}x{mask.shape[0]} px; values {share}"
