"""Use a trained model from Python (a notebook, another tool) without the workflow.

    from wsss.api import load

    seg = load("results/demo/seg/model.pt")          # any model file the workflow wrote
    result = seg.predict("photo.jpg")                 # a path, a PIL image or an RGB array
                                                      # (seg and wsfcn models)
    result.mask          # uint8 [H, W]: label per pixel (0 = background where there is one)
    result.scores        # {label name: share of the pixels it wins}
    cam = load("results/demo/cam/model.pt")
    cams = cam.cams("photo.jpg")                      # {class name: float [H, W] in [0, 1]}
    cam.classify("photo.jpg")                         # {class name: probability} (cam, wsfcn)

Images are read as :func:`wsss.data.manifest.read_image` reads them (EXIF orientation
applied). Inference runs on ``device`` (``auto``: a GPU when one is visible) with the
settings of :class:`wsss.core.settings.SegmentParams` (scales, flip, dCRF, pixel budget) for
segmentation and the CAM scales of the workflow for CAMs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from wsss.core.settings import SegmentParams

ImageLike = str | os.PathLike | np.ndarray | Image.Image
CAM_SCALES = (1.0, 0.5, 1.5, 2.0)


def as_rgb(image: ImageLike) -> np.ndarray:
    """A path, PIL image or array ([H, W], [H, W, 3] or [H, W, 4]; uint8 or float in
    [0, 255]) -> uint8 RGB [H, W, 3]."""
    from wsss.data.manifest import read_image

    if isinstance(image, (str, os.PathLike)):
        return read_image(Path(image))
    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"expected an image [H, W], [H, W, 3] or [H, W, 4], got {array.shape}")
    return np.clip(array[..., :3], 0, 255).astype(np.uint8)


@dataclass
class Segmentation:
    """What :meth:`Model.predict` returns for one image."""

    mask: np.ndarray  # uint8 [H, W], index into ``label_names``
    probabilities: np.ndarray  # float32 [L, H, W], summing to 1 per pixel
    label_names: list[str]
    scores: dict[str, float] = field(default_factory=dict)  # label -> share of pixels


class Model:
    """A model file loaded for inference (see :func:`load`)."""

    def __init__(self, path: str | os.PathLike[str], device: str = "auto"):
        from wsss.core.runtime import pick_device
        from wsss.models.registry import load_model

        self.path = Path(path)
        self.device = pick_device(device)
        loaded = load_model(self.path, device=self.device)
        self.network = loaded.model
        self.kind = loaded.kind
        self.arch = loaded.arch
        self.label_names = loaded.label_names
        self.provenance = loaded.provenance

    def __repr__(self) -> str:
        return f"Model({str(self.path)!r}, kind={self.kind!r}, labels={self.label_names})"

    def _need(self, kinds: tuple[str, ...], what: str) -> None:
        if self.kind not in kinds:
            needed = " or ".join(f"'{k}'" for k in kinds)
            raise ValueError(f"{self.path}: a '{self.kind}' model; {what} needs a {needed} model")

    def predict(self, image: ImageLike, params: SegmentParams | None = None) -> Segmentation:
        """Segment one image with a segmentation model (``seg`` kind) or WS-FCN (``wsfcn``)."""
        from wsss.core.runtime import amp_of
        from wsss.data.datasets import to_tensor
        from wsss.methods.inference import labels_from_probs, segment

        self._need(("seg", "wsfcn"), "predict")
        params = params or SegmentParams()
        rgb = as_rgb(image)
        probs = segment(
            self.network,
            [to_tensor(rgb)],
            params.scales,
            params.flip,
            amp_of(params),
            params.max_pixels,
        )[0]
        mask = labels_from_probs(rgb, probs, params)
        counts = np.bincount(mask.ravel(), minlength=len(self.label_names))
        scores = {
            name: float(count) / mask.size for name, count in zip(self.label_names, counts) if count
        }
        return Segmentation(mask, probs.cpu().numpy().astype(np.float32), self.label_names, scores)

    def cams(
        self, image: ImageLike, classes: list[str] | None = None, scales=CAM_SCALES
    ) -> dict[str, np.ndarray]:
        """Class activation maps (float [H, W] in [0, 1], each divided by its maximum) of a
        CAM model (``cam`` kind), for ``classes`` (default: every class)."""
        from wsss.data.datasets import to_tensor
        from wsss.methods.inference import multiscale_cams

        self._need(("cam",), "cams")
        wanted = list(classes) if classes is not None else list(self.label_names)
        unknown = [c for c in wanted if c not in self.label_names]
        if unknown:
            raise ValueError(f"{self.path}: no class {unknown} (classes: {self.label_names})")
        index = [self.label_names.index(c) for c in wanted]
        maps = multiscale_cams(self.network, to_tensor(as_rgb(image)), index, scales, True)
        return {name: m.cpu().numpy() for name, m in zip(wanted, maps)}

    def classify(self, image: ImageLike) -> dict[str, float]:
        """Image-level class probabilities of a CAM model (sigmoid of the pooled logits) or
        of WS-FCN (sigmoid of its class scores; the classes only, not the background)."""
        import torch

        from wsss.data.datasets import to_tensor

        self._need(("cam", "wsfcn"), "classify")
        batch = to_tensor(as_rgb(image))[None].to(self.device)
        with torch.no_grad():
            out = self.network(batch)
        if self.kind == "wsfcn":
            classes = self.label_names[int(self.arch["background"]) :]
            return dict(zip(classes, torch.sigmoid(out.scores.float())[0].cpu().tolist()))
        return dict(zip(self.label_names, torch.sigmoid(out.float())[0].cpu().tolist()))


def load(path: str | os.PathLike[str], device: str = "auto") -> Model:
    """Load any model file the workflow wrote (``wsss inspect FILE`` says what it holds)."""
    return Model(path, device)
