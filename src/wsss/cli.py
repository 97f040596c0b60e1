"""``wsss <stage> ...``: one thin command per stage; each parses its arguments and calls
the stage's ``run``. Hyperparameters come from the stage's parameter dataclass, so every
field is a ``--flag`` with the dataclass default (``--help`` lists them)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path


def add_params(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--field-name`` option per field of the dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        flag = "--" + field.name.replace("_", "-")
        kind = hints[field.name]
        default = field.default
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif typing.get_origin(kind) is tuple:
            item = typing.get_args(kind)[0]
            parser.add_argument(
                flag, type=item, nargs="+", default=default, metavar=item.__name__.upper()
            )
        else:
            parser.add_argument(flag, type=kind, default=default)


def params_from(cls: type, args: argparse.Namespace) -> object:
    """The dataclass ``cls`` filled from parsed ``args``."""
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        value = getattr(args, field.name)
        values[field.name] = (
            tuple(value) if typing.get_origin(hints[field.name]) is tuple else value
        )
    return cls(**values)


def _cmd_make_demo(args: argparse.Namespace) -> None:
    from wsss.data import demo

    demo.generate(
        args.out,
        seed=args.seed,
        num_train=args.num_train,
        num_val=args.num_val,
        image_size=args.image_size,
    )


def _cmd_prepare(args: argparse.Namespace) -> None:
    from wsss.stages import prepare_dataset

    prepare_dataset.run(
        args.kind,
        args.root,
        args.out,
        args.splits,
        json.loads(args.options),
        check_pixels=args.check_pixels,
    )


def _cmd_train_cam(args: argparse.Namespace) -> None:
    from wsss.stages import train_cam

    train_cam.run(
        args.manifest, args.out, args.state_dir, params_from(train_cam.TrainCamParams, args)
    )


def _cmd_infer_cam(args: argparse.Namespace) -> None:
    from wsss.stages import infer_cam

    infer_cam.run(
        args.manifest,
        args.model,
        args.out,
        args.shard,
        args.num_shards,
        params_from(infer_cam.InferCamParams, args),
    )


def _cmd_eval_maps(args: argparse.Namespace) -> None:
    from wsss.stages import eval_maps

    eval_maps.run(
        args.manifest, args.maps, args.out, args.stage, params_from(eval_maps.EvalMapsParams, args)
    )


def _cmd_affinity_labels(args: argparse.Namespace) -> None:
    from wsss.stages import affinity_labels

    affinity_labels.run(
        args.manifest,
        args.cams,
        args.out,
        args.shard,
        args.num_shards,
        params_from(affinity_labels.AffinityLabelParams, args),
    )


def _cmd_train_aff(args: argparse.Namespace) -> None:
    from wsss.stages import train_aff

    train_aff.run(
        args.manifest,
        args.labels,
        args.out,
        args.state_dir,
        params_from(train_aff.TrainAffParams, args),
    )


def _cmd_random_walk(args: argparse.Namespace) -> None:
    from wsss.stages import random_walk

    random_walk.run(
        args.manifest,
        args.cams,
        args.model,
        args.out,
        args.shard,
        args.num_shards,
        params_from(random_walk.RandomWalkParams, args),
    )


def _cmd_pseudo_masks(args: argparse.Namespace) -> None:
    from wsss.stages import pseudo_masks

    pseudo_masks.run(
        args.manifest,
        args.maps,
        args.out,
        args.shard,
        args.num_shards,
        params_from(pseudo_masks.PseudoMaskParams, args),
    )


def _cmd_eval_labels(args: argparse.Namespace) -> None:
    from wsss.stages import eval_labels

    eval_labels.run(args.manifest, args.labels, args.out, args.stage, args.split)


def _cmd_train_seg(args: argparse.Namespace) -> None:
    from wsss.stages import train_seg

    train_seg.run(
        args.manifest,
        args.labels,
        args.out,
        args.state_dir,
        params_from(train_seg.TrainSegParams, args),
    )


def _cmd_infer_seg(args: argparse.Namespace) -> None:
    from wsss.stages import infer_seg

    infer_seg.run(
        args.manifest,
        args.model,
        args.out,
        args.shard,
        args.num_shards,
        params_from(infer_seg.InferSegParams, args),
    )


def _cmd_predict(args: argparse.Namespace) -> None:
    from wsss.stages import predict

    skipped = predict.run(
        args.checkpoint, args.images, args.out, params_from(predict.PredictParams, args)
    )
    if skipped:
        print(
            f"skipped {len(skipped)} unreadable files (listed in {args.out / 'skipped.txt'})",
            file=sys.stderr,
        )


def _cmd_inspect(args: argparse.Namespace) -> None:
    from wsss.inspect import describe

    print(describe(args.file, limit=args.limit))


def _cmd_figure(args: argparse.Namespace) -> None:
    from wsss.stages import figure

    labels = [tuple(item.split("=", 1)) for item in args.labels]
    figure.run(
        args.manifest, args.split, args.out, args.cams, labels, args.count, args.ids, args.model
    )


def _cmd_report_figures(args: argparse.Namespace) -> None:
    from wsss.report import per_class_plot, stage_table

    stage_table(args.metrics, args.table)
    per_class_plot(args.metrics, args.plot)


def _cmd_summary(args: argparse.Namespace) -> None:
    from wsss.summary import summarize

    print(summarize(args.run_dir))


def _cmd_gpu_slot(args: argparse.Namespace) -> None:
    from wsss.gpu_slots import exec_on_slot

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise ValueError("gpu-slot needs a command to run, e.g. wsss gpu-slot -- nvidia-smi")
    exec_on_slot(cmd)


def build_parser() -> argparse.ArgumentParser:
    from wsss.stages.affinity_labels import AffinityLabelParams
    from wsss.stages.eval_maps import EvalMapsParams
    from wsss.stages.infer_cam import InferCamParams
    from wsss.stages.infer_seg import InferSegParams
    from wsss.stages.predict import PredictParams
    from wsss.stages.pseudo_masks import PseudoMaskParams
    from wsss.stages.random_walk import RandomWalkParams
    from wsss.stages.train_aff import TrainAffParams
    from wsss.stages.train_cam import TrainCamParams
    from wsss.stages.train_seg import TrainSegParams

    parser = argparse.ArgumentParser(prog="wsss", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(
        name: str, func: Callable[[argparse.Namespace], None], help: str, params: type | None = None
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        if params is not None:
            add_params(p.add_argument_group("hyperparameters"), params)
        return p

    p = command("make-demo", _cmd_make_demo, "generate the built-in demo dataset (VOC layout)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-train", type=int, default=160)
    p.add_argument("--num-val", type=int, default=48)
    p.add_argument("--image-size", type=int, default=160)

    p = command("prepare", _cmd_prepare, "check a dataset and write its manifest (JSON)")
    p.add_argument("--kind", required=True)
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--splits", nargs="+", required=True)
    p.add_argument("--options", default="{}", help="loader options as a JSON object")
    p.add_argument(
        "--check-pixels",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="decode every image and mask (not only the headers)",
    )

    p = command("train-cam", _cmd_train_cam, "train the CAM network", TrainCamParams)
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="model file to write")
    p.add_argument("--state-dir", required=True, type=Path, help="per-epoch training state")

    p = command("infer-cam", _cmd_infer_cam, "CAMs of one shard into HDF5", InferCamParams)
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--shard", type=int, default=0)
    p.add_argument("--num-shards", type=int, default=1)

    p = command(
        "eval-maps", _cmd_eval_maps, "score class maps against the ground truth", EvalMapsParams
    )
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument("--maps", required=True, nargs="+", type=Path, help="shard files")
    p.add_argument("--out", required=True, type=Path, help="metrics JSON to write")
    p.add_argument("--stage", required=True, help="name recorded in the metrics (cam, rw)")

    def shard_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--manifest", required=True, type=Path)
        p.add_argument("--out", required=True, type=Path)
        p.add_argument("--shard", type=int, default=0)
        p.add_argument("--num-shards", type=int, default=1)

    p = command(
        "affinity-labels",
        _cmd_affinity_labels,
        "confident regions from CAMs + dCRF, one PNG per image",
        AffinityLabelParams,
    )
    shard_args(p)
    p.add_argument("--cams", required=True, nargs="+", type=Path, help="CAM shard files")

    p = command("train-aff", _cmd_train_aff, "train AffinityNet", TrainAffParams)
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument(
        "--labels", required=True, nargs="+", type=Path, help="directories of affinity-label PNGs"
    )
    p.add_argument("--out", required=True, type=Path, help="model file to write")
    p.add_argument("--state-dir", required=True, type=Path, help="per-epoch training state")

    p = command(
        "random-walk",
        _cmd_random_walk,
        "refine CAMs of one shard by the random walk",
        RandomWalkParams,
    )
    shard_args(p)
    p.add_argument("--cams", required=True, nargs="+", type=Path, help="CAM shard files")
    p.add_argument("--model", required=True, type=Path, help="AffinityNet model file")

    p = command(
        "pseudo-masks",
        _cmd_pseudo_masks,
        "pseudo-masks of one shard from refined maps",
        PseudoMaskParams,
    )
    shard_args(p)
    p.add_argument("--maps", required=True, nargs="+", type=Path, help="refined-map shard files")

    p = command("eval-labels", _cmd_eval_labels, "score label-map PNGs against the ground truth")
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument("--labels", required=True, nargs="+", type=Path, help="PNG directories")
    p.add_argument("--out", required=True, type=Path, help="metrics JSON to write")
    p.add_argument("--stage", required=True)
    p.add_argument("--split", default="train")

    p = command("train-seg", _cmd_train_seg, "train the segmentation network", TrainSegParams)
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument(
        "--labels",
        nargs="*",
        default=[],
        type=Path,
        help="directories of pseudo-mask PNGs (weak supervision)",
    )
    p.add_argument("--out", required=True, type=Path, help="model file to write")
    p.add_argument("--state-dir", required=True, type=Path, help="per-epoch training state")

    p = command("infer-seg", _cmd_infer_seg, "segment one shard of a split", InferSegParams)
    shard_args(p)
    p.add_argument("--model", required=True, type=Path, help="segmentation model file")

    p = command("predict", _cmd_predict, "segment a folder of new images", PredictParams)
    p.add_argument("--checkpoint", required=True, type=Path, help="segmentation model file")
    p.add_argument("--images", required=True, type=Path, help="folder of images")
    p.add_argument("--out", required=True, type=Path, help="output folder (not the input)")

    p = command("inspect", _cmd_inspect, "print what a maps, metrics, model or mask file holds")
    p.add_argument("file", type=Path)
    p.add_argument("--limit", type=int, default=5, help="images or classes to list")

    p = command("figure", _cmd_figure, "a panel PNG: image, ground truth, CAM, label maps")
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument("--split", default="train")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--cams", nargs="*", default=[], type=Path, help="CAM shard files")
    p.add_argument(
        "--labels",
        nargs="*",
        default=[],
        metavar="TITLE=DIR",
        help="directories of <id>.png label maps, with a column title",
    )
    p.add_argument("--count", type=int, default=4)
    p.add_argument("--ids", nargs="*", default=[])
    p.add_argument("--model", type=Path, help="segmentation model: add its prediction")

    p = command(
        "report-figures",
        _cmd_report_figures,
        "the per-stage mIoU table (HTML) and per-class IoU plot (PNG) of a run",
    )
    p.add_argument("--metrics", required=True, type=Path, help="results/<run>/metrics")
    p.add_argument("--table", required=True, type=Path)
    p.add_argument("--plot", required=True, type=Path)

    p = command(
        "gpu-slot",
        _cmd_gpu_slot,
        "run a command on a free GPU of this machine (the slot every GPU stage claims)",
    )
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="the command and its arguments")

    p = command("summary", _cmd_summary, "print every stage's mIoU and the artefacts of a run")
    p.add_argument("run_dir", type=Path, help="results/<run>")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from wsss.data.manifest import DatasetError
    from wsss.store import StoreError

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if getattr(args, "device", "cpu") != "cpu":
            # Before CUDA starts: one free GPU per job when several run at once.
            from wsss.gpu_slots import claim

            claim()
        args.func(args)
    except (DatasetError, StoreError, FileNotFoundError, ValueError) as err:
        if args.verbose:
            raise
        print(f"wsss {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
