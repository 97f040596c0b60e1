"""Patch learning (Progressive Patch Learning, seed 001; reference.md section 3): the layers
after a split see one patch of the feature map at a time, so no receptive field crosses a
patch border and the classifier must find evidence in every local part.

:func:`patchwise` cuts a feature map [B, C, h, w] into k x k patches, runs the layers on
each patch on its own (zero padding at the patch's borders, as at an image border) and puts
the outputs back in place. A grid that k does not divide is cut as evenly as it can be:
patch borders at round(i h / k), so patch sizes differ by at most one; patches of the same
size are stacked along the batch and run together (at most four shapes), which is the
"parallel" processing of the paper.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def patch_bounds(size: int, k: int) -> list[tuple[int, int]]:
    """[start, end) of each of ``k`` patches along an axis of ``size`` cells (the
    non-empty ones: a grid smaller than ``k`` gets one patch per cell)."""
    if k < 1:
        raise ValueError(f"the number of patches per side must be at least 1, not {k}")
    cuts = [round(i * size / k) for i in range(k + 1)]
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def patchwise(layers: Callable[[Tensor], Tensor], x: Tensor, k: int) -> Tensor:
    """``layers`` applied to each of the k x k patches of ``x`` [B, C, h, w] independently.

    ``layers`` must keep the spatial size (stride 1); returns [B, C', h, w]. With ``k`` 1
    this is ``layers(x)``."""
    if k == 1:
        return layers(x)
    b, _, h, w = x.shape
    cells = [(r, c) for r in patch_bounds(h, k) for c in patch_bounds(w, k)]
    by_shape: dict[tuple[int, int], list[tuple[tuple[int, int], tuple[int, int]]]] = {}
    for rows, cols in cells:
        by_shape.setdefault((rows[1] - rows[0], cols[1] - cols[0]), []).append((rows, cols))
    out: Tensor | None = None
    for (ph, pw), group in by_shape.items():
        stacked = torch.cat([x[:, :, r0:r1, c0:c1] for (r0, r1), (c0, c1) in group])
        result = layers(stacked)
        if result.shape[-2:] != (ph, pw):
            raise ValueError(
                f"patch layers changed a {ph}x{pw} patch to {tuple(result.shape[-2:])}: "
                "the layers after the split must keep the spatial size"
            )
        if out is None:
            out = result.new_zeros(b, result.shape[1], h, w)
        for i, ((r0, r1), (c0, c1)) in enumerate(group):
            out[:, :, r0:r1, c0:c1] = result[i * b : (i + 1) * b]
    assert out is not None
    return out
