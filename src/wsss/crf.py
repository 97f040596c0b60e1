"""Dense CRF (Kraehenbuehl & Koltun) through pydensecrf2, with the reference parameters."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CRFParams:
    """Reference defaults: 10 iterations, Gaussian sxy 3 / compat 3, bilateral sxy 80 /
    srgb 13 / compat 10 (pixel and 0-255 colour units). Stages that run a CRF extend it."""

    crf_iterations: int = 10
    crf_gaussian_sxy: float = 3.0
    crf_gaussian_compat: float = 3.0
    crf_bilateral_sxy: float = 80.0
    crf_bilateral_srgb: float = 13.0
    crf_bilateral_compat: float = 10.0


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
    crf.addPairwiseGaussian(sxy=params.crf_gaussian_sxy, compat=params.crf_gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=params.crf_bilateral_sxy,
        srgb=params.crf_bilateral_srgb,
        rgbim=np.ascontiguousarray(image),
        compat=params.crf_bilateral_compat,
    )
    q = crf.inference(params.crf_iterations)
    return np.asarray(q, dtype=np.float32).reshape(labels, height, width)
