"""Stage: generate the built-in demo dataset (VOC layout; :mod:`wsss.data.demo`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wsss.core.stage import Stage, arg


@dataclass(frozen=True, kw_only=True)
class Params:
    """Size of the generated dataset; the same settings give byte-identical files."""

    seed: int = arg(0, "random seed")
    num_train: int = arg(160, "train images", minimum=1)
    num_val: int = arg(48, "val images", minimum=1)
    image_size: int = arg(160, "image side (pixels)", minimum=64)
    max_objects: int = arg(
        3, "objects per image at most (1: one label per image)", minimum=1, maximum=3
    )
    marking_contrast: float = arg(
        1.0,
        "spread of the class markings' colours (small: visually similar classes)",
        maximum=1,
        above=0,
    )


@dataclass(frozen=True, kw_only=True)
class IO:
    out: Path = arg(help="dataset directory to write (replaced atomically)")


def run(io: IO, params: Params) -> None:
    """Write the demo dataset to ``io.out``."""
    from wsss.data import demo

    demo.generate(
        io.out,
        seed=params.seed,
        num_train=params.num_train,
        num_val=params.num_val,
        image_size=params.image_size,
        max_objects=params.max_objects,
        marking_contrast=params.marking_contrast,
    )


STAGE = Stage(
    "make-demo", "generate the built-in demo dataset (VOC layout)", IO, Params, run, section="demo"
)
