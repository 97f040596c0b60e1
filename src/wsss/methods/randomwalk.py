"""Random-walk refinement of class activation maps with semantic affinities (AffinityNet).

Ahn & Kwak, "Learning Pixel-level Semantic Affinity with Image-level Supervision for Weakly
Supervised Semantic Segmentation", CVPR 2018. On a grid of N = h * w positions with features
f [D, h, w]:

* eq. 3:  W_ij = exp(-mean_d |f_i[d] - f_j[d]|) for 0 < ||p_i - p_j||_2 < radius, W_ii = 1,
  W_ij = 0 otherwise (the channel mean, as in the released code). W is symmetric. The
  affinity itself is AffinityNet's output (:func:`wsss.models.affinitynet.pairwise_affinity`,
  also its training target's form); here it fills the walk's matrix.
* eq. 11: T = D^-1 W^(o beta), the Hadamard power beta of W, row-normalised
  (D = diag of the row sums of W^(o beta)).
* eq. 12: vec(M*_c) = T^t vec(M_c) for every channel c, with t = 2^logt, i.e. each step
  replaces every position by the T-weighted average of its neighbours.

:func:`random_walk` keeps T as a sparse matrix of N * K non-zeros (K neighbours per row,
K = 69 at radius 5) and applies it t times: O(N K) memory and O(t N K C) time.
:func:`dense_random_walk` is the dense formulation of the released code (T^t by repeated
squaring of the N x N matrix), kept as a reference for tests and benchmarks.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wsss.core.runtime import autocast
from wsss.data.datasets import PAD_RGB
from wsss.methods.metrics import background_score
from wsss.models.affinitynet import (
    AffinityNet,
    neighbour_offsets,
    pairwise_affinity,
)

GRID = 8  # stride of the affinity grid (pixels)


def transition_matrix(features: Tensor, radius: int = 5, beta: float = 8.0) -> Tensor:
    """The row-normalised transition matrix T = D^-1 W^(o beta) (eqs. 3 and 11), sparse.

    Args:
        features: [D, h, w].

    Returns:
        Sparse CSR [N, N], N = h * w (row-major positions), with the N * K' non-zeros of the
        in-grid pairs (K' <= K + 1 per row: the centre and the neighbours inside the grid).
        Same dtype and device as ``features``.
    """
    if features.dim() != 3:
        raise ValueError(f"features must be [D, h, w], got shape {tuple(features.shape)}")
    _, height, width = features.shape
    n = height * width
    # Lexicographic (dy, dx) order keeps the column indices of each row sorted, as CSR needs.
    offsets = sorted(neighbour_offsets(radius) + [(0, 0)])
    affinity, valid = pairwise_affinity(features[None], offsets)  # [1, K, h, w], [K, h, w]
    weights = torch.where(valid, affinity[0].pow(beta), 0.0)  # W^(o beta), W_ii = exp(0) = 1
    transition = weights / weights.sum(0)  # rows sum to 1

    position = torch.arange(n, device=features.device).view(height, width)
    columns = torch.stack([position + dy * width + dx for dy, dx in offsets], -1)  # [h, w, K]
    keep = valid.permute(1, 2, 0)  # [h, w, K], rows in row-major order
    row_counts = keep.sum(-1).flatten()
    index_dtype = torch.int32 if n * len(offsets) < 2**31 else torch.int64
    crow = torch.zeros(n + 1, dtype=index_dtype, device=features.device)
    crow[1:] = row_counts.cumsum(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            crow,
            columns[keep].to(index_dtype),
            transition.permute(1, 2, 0)[keep],
            size=(n, n),
            check_invariants=False,
        )


def random_walk(
    cam: Tensor, features: Tensor, radius: int = 5, beta: float = 8.0, logt: int = 8
) -> Tensor:
    """Propagate class activation maps by the random walk of AffinityNet (eq. 12).

    Computes vec(out_c) = T^t vec(cam_c) for every channel c with t = 2^logt and
    T = D^-1 W^(o beta) from :func:`transition_matrix`: each of the t steps replaces every
    position by the transition-weighted average of itself and its in-grid neighbours at
    Euclidean distance < ``radius``. T is never formed densely: memory O(N * radius^2),
    time O(2^logt * N * radius^2 * C). Runs on the device of the inputs.

    Each step is one small sparse-dense product, i.e. one parallel region on CPU: where
    other busy processes share the cores, the threads' synchronisation can cost
    milliseconds per step, more than the product (a 64x64 grid took 16x longer beside two
    busy processes). So on the CPU the walk (the transition matrix and the steps) runs on
    one thread whatever torch's setting, which keeps its time nearly independent of the
    machine's load.

    Args:
        cam: float [C, h, w], e.g. a background map and the maps of the present classes.
        features: [D, h, w], on the same grid and device (cast to ``cam``'s dtype).
        radius: pairs at grid distance < radius are connected (1: only the self-loops).
        beta: Hadamard power of the affinities.
        logt: log2 of the number of steps t (0: a single step).

    Returns:
        [C, h, w], same dtype and device as ``cam``.
    """
    if cam.dim() != 3 or features.dim() != 3 or cam.shape[1:] != features.shape[1:]:
        raise ValueError(
            f"cam [C, h, w] and features [D, h, w] must share the grid, got "
            f"{tuple(cam.shape)} and {tuple(features.shape)}"
        )
    if cam.device != features.device:
        raise ValueError(f"cam on {cam.device} and features on {features.device}")
    if not cam.is_floating_point():
        raise TypeError(f"cam must be a floating-point tensor, got {cam.dtype}")
    if logt < 0:
        raise ValueError(f"logt must be non-negative, got {logt}")
    channels, height, width = cam.shape
    threads = torch.get_num_threads()
    if cam.device.type == "cpu":
        torch.set_num_threads(1)
    try:
        transition = transition_matrix(features.to(cam.dtype), radius, beta)
        walked = cam.reshape(channels, height * width).t().contiguous()  # [N, C]
        for _ in range(2**logt):
            walked = transition @ walked
    finally:
        torch.set_num_threads(threads)
    return walked.t().reshape(channels, height, width).contiguous()


def dense_random_walk(
    cam: Tensor, features: Tensor, radius: int = 5, beta: float = 8.0, logt: int = 8
) -> Tensor:
    """Reference random walk with a dense N x N transition matrix, as in the released code.

    Builds W [N, N] from all pairwise channel-mean L1 feature distances, keeps the pairs at
    grid distance < ``radius`` (W_ii = 1), takes the Hadamard power beta, row-normalises to T,
    squares T ``logt`` times to get T^(2^logt) and applies it to vec(cam). O(N^2) memory and
    O(N^3 * logt) time: for tests and benchmarks only; use :func:`random_walk`.

    Args:
        cam: float [C, h, w]; the computation runs in its dtype and on its device.
        features: [D, h, w].

    Returns:
        [C, h, w].
    """
    channels, height, width = cam.shape
    depth = features.shape[0]
    n = height * width
    flat = features.to(cam.dtype).reshape(depth, n).t()  # [N, D]
    affinity = torch.exp(-torch.cdist(flat[None], flat[None], p=1)[0] / depth)  # [N, N]
    position = torch.arange(n, dtype=torch.int32, device=cam.device)
    ys, xs = position // width, position % width
    distance2 = (ys[:, None] - ys[None, :]).square_()  # squared grid distances [N, N]
    distance2 += (xs[:, None] - xs[None, :]).square_()
    affinity = affinity.pow_(beta).masked_fill_(distance2 >= radius * radius, 0.0)
    del distance2
    transition = affinity.div_(affinity.sum(1, keepdim=True))
    squared = torch.empty_like(transition)
    for _ in range(logt):
        torch.mm(transition, transition, out=squared)
        transition, squared = squared, transition
    del squared
    return (transition @ cam.reshape(channels, n).t()).t().reshape(channels, height, width)


def grid_average(maps: Tensor, grid: tuple[int, int]) -> Tensor:
    """[C, H, W] -> [C, gh, gw]: mean of each 8x8 cell over the pixels inside the image."""
    height, width = maps.shape[-2:]
    pad = (0, grid[1] * GRID - width, 0, grid[0] * GRID - height)
    total = F.avg_pool2d(F.pad(maps, pad)[None], GRID)[0]
    inside = F.avg_pool2d(F.pad(torch.ones_like(maps[:1]), pad)[None], GRID)[0]
    return total / inside


@torch.no_grad()
def affinity_features(model: AffinityNet, image: Tensor, amp: bool | str = False) -> Tensor:
    """Image [3, H, W] in [0, 255] -> features [D, ceil(H/8), ceil(W/8)] (padded input)."""
    height, width = image.shape[-2:]
    gh, gw = -(-height // GRID), -(-width // GRID)
    padded = torch.tensor(PAD_RGB).view(3, 1, 1).repeat(1, gh * GRID, gw * GRID)
    padded[:, :height, :width] = image
    device = next(model.parameters()).device
    with autocast(device, amp):
        features = model(padded[None].to(device))[0].float()
    return features[:, :gh, :gw]


def refine(
    model: AffinityNet,
    image: Tensor,
    maps: np.ndarray,
    has_background: bool,
    radius: int,
    beta: float,
    logt: int,
    alphas: Sequence[float],
    amp: bool | str = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Refined maps of one image (paper 3.3): foreground [K, gh, gw] and, with a background
    class, one background map per alpha [A, gh, gw] (else None).

    AffinityNet features on the stride-8 grid (image padded to a multiple of 8); CAMs
    ``maps`` [K, H, W] averaged onto the same grid; with a background class, one channel
    ``(1 - max_c M_c) ** alpha`` per alpha (at the image resolution, then averaged); then
    ``T^t`` applied to all channels at once. The walk is linear, so walking one background
    channel per alpha gives every alpha's refined maps in one pass.
    """
    features = affinity_features(model, image, amp)
    grid = tuple(features.shape[-2:])
    channels = [maps]
    alphas = tuple(alphas) if has_background else ()
    if alphas:
        channels.insert(0, np.stack([background_score(maps, alpha=a) for a in alphas]))
    stacked = torch.from_numpy(np.concatenate(channels).astype(np.float32))
    if len(stacked) == 0:
        walked = torch.zeros(0, *grid)
    else:
        cams = grid_average(stacked, grid).to(features.device)
        walked = random_walk(cams, features, radius, beta, logt).cpu()
    walked = walked.numpy()
    return walked[len(alphas) :], (walked[: len(alphas)] if alphas else None)
