# Experiments, the paths of their artefacts, and config sections as command-line flags.
#
# Every artefact lives under results/<experiment>/ (results/<run>/ without `experiments:`).
# A job of experiment E reads an artefact from the directory of the first experiment whose
# settings agree with E's up to that artefact (wsss.workflow.experiments.owner), so each distinct
# artefact is computed once.

import fcntl
import functools
import json
import os
import re
import shlex
import socket
import sys
import time

from snakemake.settings.types import DeploymentMethod

from wsss.workflow import experiments, pipeline
from wsss.workflow.config_check import check_config
from wsss.stages.prepare import dataset_files, dataset_listing

# Jobs call `wsss`: find it next to the Python that runs Snakemake (a conda env, when
# used, is activated inside the job and comes first).
BIN = os.path.dirname(sys.executable)
os.environ.update(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")

RESULTS = config["results"]
EXPERIMENTS = experiments.expand(config)
# Jobs in conda envs (--software-deployment-method conda) get the dense CRF from
# envs/wsss.yaml whatever this Python has; otherwise they run in this Python's environment.
JOBS_IN_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
for _exp in EXPERIMENTS.values():
    try:
        validate(_exp.config, "../schemas/config.schema.yaml")
        check_config(_exp.config, os.getcwd(), crf_installed=True if JOBS_IN_CONDA else None)
    except Exception as err:
        raise ValueError(f"experiment '{_exp.path}': {err}") from err
COMPARE = bool(config.get("experiments"))
COMPARISON = f"{RESULTS}/{config['run']}/comparison"
# Every demo dataset the experiments read: directory -> demo settings (wsss.workflow.experiments
# gives an experiment whose demo settings differ from the base config's its own).
DEMOS = experiments.demo_datasets(EXPERIMENTS)
# The run's directory, locked while a run writes into it (lock_results).
RUN_DIR = f"{RESULTS}/{config['run']}"
# Outputs of every experiment that `rule all` asks for besides its scored steps and report
# (patterns with {exp}): a rule whose output nothing else reads adds itself here,
# `EXPERIMENT_TARGETS.append(rules.<name>.output)`, so a new stage needs no other file.
EXPERIMENT_TARGETS = []
RESULTS_LOCK = os.path.join(RUN_DIR, ".lock")


wildcard_constraints:
    exp="|".join(re.escape(path) for path in EXPERIMENTS),
    shard="[0-9]+",
    stage="[0-9]+",


def cfg(wildcards) -> dict:
    """The settings of the job's experiment."""
    return EXPERIMENTS[wildcards.exp].config


def gpu_request(wildcards) -> int:
    """The GPUs a network job of the experiment asks for (Snakemake's ``gpu`` resource, a
    SLURM profile's --gpus): one, or none when its ``device`` is cpu."""
    return 0 if str(cfg(wildcards)["device"]) == "cpu" else 1


def out(relative: str) -> str:
    """An output path of the job's own experiment."""
    return f"{RESULTS}/{{exp}}/{relative}"


def out_of(artefact: str) -> str:
    """The output path of ``artefact`` in the job's own experiment (its path in
    wsss.workflow.pipeline; a sharded one's with the {shard} wildcard)."""
    return out(pipeline.PATHS[artefact])


def at(exp: str, artefact: str, **wildcards: object) -> str:
    """Where experiment ``exp`` finds ``artefact`` (in its owner's directory); ``wildcards``
    fill its path's (``shard=0``)."""
    owner = experiments.owner(EXPERIMENTS, exp, artefact)
    return f"{RESULTS}/{owner}/{pipeline.PATHS[artefact].format(**wildcards)}"


def shards(exp: str, artefact: str) -> list[str]:
    """Every shard of a sharded artefact, in its owner's directory."""
    owner = experiments.owner(EXPERIMENTS, exp, artefact)
    count = EXPERIMENTS[owner].config["num_shards"]
    return [at(exp, artefact, shard=k) for k in range(count)]


def manifest(wildcards) -> str:
    return at(wildcards.exp, "dataset")


def flags(section: dict) -> str:
    """`--key value` for every entry of a config section (lists space-separated,
    booleans as --key / --no-key), the form every `wsss <stage>` command accepts; each
    value quoted for the shell (a weights path with a space stays one argument)."""
    parts = []
    for key, value in section.items():
        name = key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(f"--{name}" if value else f"--no-{name}")
        elif isinstance(value, (list, tuple)):
            parts.append(f"--{name} {' '.join(shlex.quote(str(v)) for v in value)}")
        else:
            parts.append(f"--{name} {shlex.quote(str(value))}")
    return " ".join(parts)


def section(*keys: str):
    """A params function: the flags of one config section of the job's experiment."""
    return lambda wildcards: flags(experiments.lookup(cfg(wildcards), ".".join(keys)))


def setting(*keys: str):
    """A params function: one setting of the job's experiment."""
    return lambda wildcards: experiments.lookup(cfg(wildcards), ".".join(keys))


def metrics_of(exp: str) -> list[str]:
    """The metrics files of every scored step of an experiment, in pipeline order."""
    return [
        at(exp, step.artefact)
        for step in pipeline.steps_of(EXPERIMENTS[exp].config)
    ]


def models_of(exp: str) -> list[str]:
    """The model file of every network an experiment trains (its training.csv and
    health.json lie beside it)."""
    config = EXPERIMENTS[exp].config
    return [at(exp, artefact) for artefact in pipeline.networks_of(config)]


def log(name: str) -> str:
    return f"{RESULTS}/{{exp}}/logs/{name}.log"


def bench(name: str) -> str:
    return f"{RESULTS}/{{exp}}/benchmarks/{name}.tsv"


def dataset_inputs(wildcards) -> list[str]:
    """What the manifest is made from: the generated demo dataset (made by its make_demo
    rule), or a dataset's split files, class list, label CSV or annotation JSON files, so
    that editing one of them makes the manifest stale."""
    data = cfg(wildcards)["dataset"]
    if data["kind"] == "demo":
        return [data["root"]]
    return dataset_files(data["kind"], data["root"], data["options"])


@functools.cache
def _listing(kind: str, root: str, options: str) -> str:
    return dataset_listing(kind, root, json.loads(options))


def dataset_listing_of(wildcards) -> str:
    """A digest of the names, sizes and times of a dataset's image and mask files (a
    param: an image added, removed or replaced makes the manifest stale); none for the
    demo dataset, which its make_demo rule writes."""
    data = cfg(wildcards)["dataset"]
    if data["kind"] == "demo":
        return ""
    return _listing(data["kind"], data["root"], json.dumps(data["options"], sort_keys=True))


def demo_rule_name(root: str) -> str:
    """The name of the job that makes a demo dataset: make_demo for the base config's,
    make_demo_<x> for an experiment's own (<base root>-<x>, given by wsss.workflow.experiments)."""
    base = config["dataset"]["root"]
    if root == base:
        return "make_demo"
    prefix = f"{os.path.normpath(base)}-"
    tag = root[len(prefix) :] if root.startswith(prefix) else root
    return "make_demo_{}".format(re.sub(r"\W", "_", tag))


# ---- one run at a time in a run's directory ------------------------------------------------
# Snakemake locks a working directory; two runs from different working directories (or
# machines) on one results directory would both write it. The main Snakemake process takes
# an flock on <results>/<run>/.lock when it starts its jobs (onstart: not for dry runs nor
# in the processes of cluster jobs, which run with --no-hooks) and keeps it until it exits;
# the kernel releases it when the process dies, so the lock of a killed run is taken over.
_HELD: dict[str, int] = {}


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return (
            f"PID {info['pid']} on {info['host']}, working directory {info['cwd']}, "
            f"since {info['since']}"
        )
    except (ValueError, KeyError, TypeError):
        return "a process that left no details"


def lock_results() -> None:
    """Lock the run's directory for this process, or stop naming the run that holds it."""
    from snakemake.exceptions import WorkflowError

    os.makedirs(RUN_DIR, exist_ok=True)
    fd = os.open(RESULTS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(os.pread(fd, 4096, 0).decode(errors="replace"))
        os.close(fd)
        raise WorkflowError(
            f"{RUN_DIR}: another run is writing into this results directory ({holder}); "
            "wait for it to end, or give this run another results: or run:"
        ) from None
    left = os.pread(fd, 4096, 0).decode(errors="replace").strip()
    if left:
        print(
            f"{RUN_DIR}: taking over the lock of a run that ended without releasing it "
            f"({_holder(left)}; no longer running)",
            file=sys.stderr,
        )
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "cwd": os.getcwd(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    _HELD["fd"] = fd


def unlock_results() -> None:
    """Release the run's directory (empty the lock file: no run holds it)."""
    fd = _HELD.pop("fd", None)
    if fd is not None:
        os.ftruncate(fd, 0)
        os.close(fd)


def dataset_splits(wildcards) -> list[str]:
    """Every split the experiment uses, once each."""
    data = cfg(wildcards)["dataset"]
    return list(dict.fromkeys([data["train_split"], data["eval_split"], data["val_split"]]))


def seg_labels(wildcards) -> list[str]:
    """The pseudo-mask directories (weak supervision): the random walk's pseudo-masks, or
    WS-FCN's masks of the training split (method wsfcn, hybrid); none for the bound."""
    if wildcards.model == "seg_full":
        return []
    if pipeline.method_of(cfg(wildcards)) == "wsfcn":
        return shards(wildcards.exp, "wsfcn_train")
    return shards(wildcards.exp, "pseudo")


def wsfcn_split(wildcards) -> str:
    """The split whose WS-FCN masks a job makes: part train -> the training split, val ->
    the val split."""
    return cfg(wildcards)["dataset"][f"{wildcards.part}_split"]


def wsfcn_eval_split(wildcards) -> str:
    """The split WS-FCN's masks are scored on: the training split's on the eval split (as
    the pseudo-masks), the val split's on the val split."""
    data = cfg(wildcards)["dataset"]
    return data["eval_split"] if wildcards.part == "train" else data["val_split"]


def has_examples(exp: str) -> bool:
    """Whether the report's example panel applies: the psa chain up to the segmentation
    network (it shows the CAMs, affinity labels and pseudo-masks), or WS-FCN with its masks
    of the training split."""
    config = EXPERIMENTS[exp].config
    keys = [s.key for s in pipeline.steps_of(config)]
    return "wsfcn_train" in keys if pipeline.method_of(config) == "wsfcn" else "seg" in keys


def examples_input(wildcards) -> dict:
    """The example panel's inputs: psa, the CAMs, affinity labels, pseudo-masks and the
    segmentation network; wsfcn, its masks of the training split and its network."""
    exp = wildcards.exp
    if pipeline.method_of(cfg(wildcards)) == "wsfcn":
        return {
            "manifest": manifest(wildcards),
            "masks": shards(exp, "wsfcn_train"),
            "model": at(exp, "wsfcn_model"),
        }
    return {
        "manifest": manifest(wildcards),
        "cams": shards(exp, "cam"),
        "aff": shards(exp, "aff_labels"),
        "pseudo": shards(exp, "pseudo"),
        "model": at(exp, "seg_model"),
    }


def examples_flags(wildcards, input) -> str:
    """`wsss figure` flags for the panel's columns between the image and its prediction."""
    columns = {"aff": "affinity labels", "pseudo": "pseudo-mask", "masks": "WS-FCN mask"}
    labels = [
        shlex.quote(f"{title}={d}") for key, title in columns.items() for d in input.get(key, [])
    ]
    cams = [shlex.quote(path) for path in input.get("cams", [])]
    return (f"--maps {' '.join(cams)} " if cams else "") + f"--labels {' '.join(labels)}"


def cam_train_flags(wildcards, stage: int | None = None) -> str:
    """The flags of cam.train for the last stage (``stage`` None) or for progressive stage
    ``stage`` (its patches from cam.train.progressive)."""
    train = dict(cfg(wildcards)["cam"]["train"])
    schedule = train.pop("progressive")
    if stage is not None:
        train["patches"] = schedule[stage]
    return flags(train)


def cam_init(wildcards, stage: int | None = None) -> list[str]:
    """The model a CAM training starts from: the previous progressive stage's, if any."""
    count = len(cfg(wildcards)["cam"]["train"]["progressive"])
    previous = count - 1 if stage is None else stage - 1
    return [f"{RESULTS}/{wildcards.exp}/cam/stage-{previous}/model.pt"] if previous >= 0 else []
