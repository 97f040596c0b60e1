"""The pipeline of each method: its scored steps in order, and the artefacts each step
depends on. ``rule all``, the report, ``wsss summary``, the experiments and the
benchmarks read the step list from here; the workflow reads the artefact graph to compute
an artefact once for all experiments whose settings agree up to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

METHODS = ("psa",)


@dataclass(frozen=True)
class Step:
    """A scored step: ``key`` names its metrics file (``metrics/<key>.json``)."""

    key: str
    title: str
    split: str  # "train": scored on dataset.eval_split; "val": on dataset.val_split
    artefact: str  # the artefact (node of ARTEFACTS) whose score it is


STEPS: dict[str, tuple[Step, ...]] = {
    "psa": (
        Step("cam", "CAMs", "train", "cam_eval"),
        Step("aff_labels", "affinity labels, confident pixels only", "train", "aff_eval"),
        Step("rw", "random walk", "train", "rw_eval"),
        Step("pseudo", "pseudo-masks", "train", "pseudo_eval"),
        Step("seg", "segmentation, weak", "val", "seg_eval"),
        Step("seg_full", "segmentation, fully supervised bound", "val", "seg_full_eval"),
    ),
}


@dataclass(frozen=True)
class Artefact:
    """What a step's output is made from (``sources``), which config keys its content
    depends on (``keys``), and the workflow rules that make it (``rules``; ``sharded``:
    one job per shard)."""

    sources: tuple[str, ...]
    keys: tuple[str, ...]
    rules: tuple[str, ...]
    sharded: bool = False


# Two experiments share an artefact when its keys agree for it and for everything upstream.
ARTEFACTS: dict[str, Artefact] = {
    "dataset": Artefact((), ("dataset", "demo"), ("prepare_dataset",)),
    "cam_model": Artefact(("dataset",), ("cam.train",), ("train_cam_stage", "train_cam")),
    "cam": Artefact(("cam_model",), ("cam.infer", "num_shards"), ("infer_cam",), True),
    "cam_eval": Artefact(("cam",), ("cam.eval",), ("eval_cam",)),
    "aff_labels": Artefact(("cam",), ("affinity.labels",), ("affinity_labels",), True),
    "aff_eval": Artefact(("aff_labels",), (), ("eval_aff_labels",)),
    "aff_model": Artefact(("aff_labels",), ("affinity.train",), ("train_aff",)),
    "rw": Artefact(("aff_model", "cam"), ("affinity.random_walk",), ("random_walk",), True),
    "rw_eval": Artefact(("rw",), (), ("eval_rw",)),
    "pseudo": Artefact(("rw",), ("pseudo",), ("pseudo_masks",), True),
    "pseudo_eval": Artefact(("pseudo",), (), ("eval_pseudo",)),
    "seg_model": Artefact(("pseudo",), ("seg.train",), ("train_seg",)),
    "seg_pred": Artefact(("seg_model",), ("seg.infer",), ("infer_seg",), True),
    "seg_eval": Artefact(("seg_pred",), (), ("eval_seg",)),
    "seg_full_model": Artefact(("dataset",), ("seg.train",), ("train_seg_full",)),
    "seg_full_pred": Artefact(("seg_full_model",), ("seg.infer",), ("infer_seg_full",), True),
    "seg_full_eval": Artefact(("seg_full_pred",), (), ("eval_seg_full",)),
}


# Rules that run once per item of a setting, not per shard: rule -> number of jobs (their
# log and benchmark files end in -0, -1, ...).
REPEATED: dict[str, Callable[[dict], int]] = {
    "train_cam_stage": lambda config: len(config["cam"]["train"].get("progressive", [])),
}


# The trained networks of each method: artefact -> model file (relative to the experiment).
NETWORKS: dict[str, dict[str, str]] = {
    "psa": {
        "cam_model": "cam/model.pt",
        "aff_model": "aff/model.pt",
        "seg_model": "seg/model.pt",
        "seg_full_model": "seg_full/model.pt",
    },
}


def upstream(artefact: str) -> set[str]:
    """``artefact`` and every artefact it is made from."""
    seen, pending = set(), [artefact]
    while pending:
        node = pending.pop()
        if node not in seen:
            seen.add(node)
            pending.extend(ARTEFACTS[node].sources)
    return seen


def networks_of(config: dict) -> dict[str, str]:
    """The trained networks a workflow config asks for (those its scored steps need):
    artefact -> model file."""
    needed = set().union(*(upstream(step.artefact) for step in steps_of(config)))
    found = NETWORKS[config.get("method", "psa")]
    return {k: v for k, v in found.items() if k in needed}


def steps(method: str = "psa", full_bound: bool = True) -> tuple[Step, ...]:
    """The scored steps of ``method`` in pipeline order (the bound only if asked for)."""
    if method not in STEPS:
        raise ValueError(f"unknown method '{method}' (known: {', '.join(STEPS)})")
    return tuple(s for s in STEPS[method] if full_bound or s.key != "seg_full")


def steps_of(config: dict) -> tuple[Step, ...]:
    """The scored steps a workflow config asks for: up to ``last_step`` (None: all)."""
    found = steps(config.get("method", "psa"), config["seg"]["full_bound"])
    last = config.get("last_step")
    keys = [s.key for s in STEPS[config.get("method", "psa")]]
    if last is None:
        return found
    if last not in keys:
        raise ValueError(f"last_step: unknown step '{last}' (known: {', '.join(keys)})")
    return tuple(s for s in found if keys.index(s.key) <= keys.index(last))


def all_steps() -> dict[str, Step]:
    """Every known step by key (for readers of finished runs: summary, report)."""
    return {s.key: s for method in STEPS.values() for s in method}
