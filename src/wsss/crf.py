"""Dense CRF (Kraehenbuehl & Koltun) through pydensecrf2, with the reference parameters."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CRFParams:
    """Reference defaults: 10 iterations, Gaussian sxy 3 / compat 3, bilateral sxy 80 /
    srgb 13 / compat 10 (pixel and 0-255 colour units)."""

    iterations: int = 10
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 80.0
    bilateral_srgb: float = 13.0
    bilateral_compat: float = 10.0


def dense_crf(image: np.ndarray, scores: np.ndarray, params: CRFParams = CRFParams()) -> np.ndarray:
    """Refine per-label scores with a dense CRF.

    image: uint8 RGB [H, W, 3]; scores: non-negative [L, H, W] (normalised per pixel into
    probabilities; unary = -log p). Returns the CRF marginals float32 [L, H, W].
    """
    import pydensecrf.densecrf as dcrf

    labels, height, width = scores.shape
    if image.shape[:2] != (height, width):
        raise ValueError(f"image {image.shape[:2]} and scores {scores.shape[1:]} differ in size")
    probs = np.clip(scores.astype(np.float32), 1e-5, None)
    probs /= probs.sum(0, keepdims=True)
    crf = dcrf.DenseCRF2D(width, height, labels)
    crf.setUnaryEnergy(np.ascontiguousarray(-np.log(probs).reshape(labels, -1)))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(sxy=params.bilateral_sxy, srgb=params.bilateral_srgb,
                             rgbim=np.ascontiguousarray(image), compat=params.bilateral_compat)  # fmt: skip
    q = crf.inference(params.iterations)
    return np.asarray(q, dtype=np.float32).reshape(labels, height, width)
