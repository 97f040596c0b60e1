"""Dense CRF (Kraehenbuehl & Koltun) through pydensecrf2, with the reference parameters."""

from __future__ import annotations

import numpy as np

from wsss.core.errors import MissingDependency
from wsss.core.settings import CRFParams


def dense_crf(image: np.ndarray, scores: np.ndarray, params: CRFParams) -> np.ndarray:
    """Refine per-label scores with a dense CRF.

    image: uint8 RGB [H, W, 3]; scores: non-negative [L, H, W] (normalised per pixel into
    probabilities; unary = -log p). Returns the CRF marginals float32 [L, H, W].
    """
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as err:
        raise MissingDependency(
            "the dense CRF needs the package pydensecrf2 (imported as pydensecrf), which is "
            "not installed: pip install pydensecrf2==1.1 (it compiles at install and needs a "
            "C++ compiler, e.g. apt-get install g++), or turn the dense CRF off "
            "(affinity labels always use it; pseudo.crf: false, seg.infer.crf: false)"
        ) from err

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
