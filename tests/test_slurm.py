"""The workflow on a real SLURM: a single-node cluster from Debian's packages, two fake GPUs.

The cluster command is the README's, ``snakemake --workflow-profile profiles/slurm``, with a
reduced demo config; its outputs must equal those of a local run
(``--workflow-profile profiles/local``) of the same config. It runs under
``make test-slurm``, which installs SLURM first (``tools/install-slurm.sh``); elsewhere, and
where SLURM is missing or the daemons cannot be started (not root), it is skipped saying why.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from slurm_cluster import Cluster, start_cluster, unavailable_reason
from test_workflow import TINY, planned_jobs

REPO = Path(__file__).resolve().parent.parent
REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"SLURM test skipped: {REASON}")


def local_rules() -> set[str]:
    """The rules that run beside Snakemake: the Snakefile's ``localrules:`` and every rule
    declared with ``localrule: True``."""
    block = re.search(r"^localrules:\n((?:[ \t]+\w+,?\n)+)", (REPO / "Snakefile").read_text(), re.M)
    names = set(re.findall(r"\w+", block.group(1)))
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for rule in re.split(r"^(?=rule \w+)", smk.read_text(), flags=re.M):
            if re.search(r"^\s+localrule:\s*True", rule, re.M):
                names.add(re.match(r"rule (\w+)", rule)[1])
    return names


LOCAL_RULES = local_rules()
# One thread per job in both runs, so that both compute the same numbers; memory and time
# within what the one test node offers.
CONFIG = {
    **TINY,
    "threads": {"train": 1, "shard": 1},
    "resources": {
        "train": {"mem_mb": 3000, "runtime": 20},
        "shard": {"mem_mb": 1500, "runtime": 10},
    },
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    yield cluster
    cluster.stop()


def run_workflow(profile: str, workdir: Path) -> str:
    """Run the workflow with a profile; return Snakemake's log (stderr)."""
    config = workdir / "tiny.yaml"
    workdir.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(CONFIG))
    # The README's commands, from the repository, with the results in `workdir`.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--workflow-profile",
            f"profiles/{profile}",
            "--configfile",
            str(config),
            "--directory",
            str(workdir),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stderr


def test_workflow_runs_as_slurm_jobs_and_matches_a_local_run(
    cluster: Cluster, tmp_path: Path
) -> None:
    log = run_workflow("slurm", tmp_path / "slurm")
    run_workflow("local", tmp_path / "local")

    # Every job of the workflow but the cheap local ones went through sbatch: slurmctld
    # lists one completed job per planned job (the executor puts the rule name in the
    # job's comment); evaluations and figures run beside Snakemake (local rules; no
    # experiments here: no comparison; no single-stage network: no WS-FCN evaluation).
    planned = planned_jobs(log)
    planned.pop("all")  # the target rule runs no command
    local_jobs = {rule: planned.pop(rule) for rule in LOCAL_RULES if rule in planned}
    assert set(local_jobs) == LOCAL_RULES - {"experiment_plan", "compare", "eval_wsfcn"}
    completed = Counter(
        re.sub(r"^rule_([a-z_]+?)(_wildcards_.*)?$", r"\1", comment)
        for state, comment in (
            line.split("|")
            for line in cluster.run("squeue", "-h", "-t", "all", "-o", "%T|%k").splitlines()
        )
        if state == "COMPLETED"
    )
    assert completed == planned
    assert sum(planned.values()) == 18  # 2 shards: 10 per-shard jobs, 8 others
    run = tmp_path / "slurm/results/tiny"
    train_logs = list(run.glob("logs/train_*.log"))
    assert len(train_logs) == 4  # cam, aff, seg, seg_full
    for log in train_logs + list(run.glob("logs/infer_*.log")):
        # GPU jobs got a device from SLURM's gres (--gpus=1) and kept it, its lock in a
        # folder of its own SLURM job.
        claimed = r"GPU: claimed device ([01]) of \1 from CUDA_VISIBLE_DEVICES \(lock "
        assert re.search(claimed + r".*/slurm-job-\d+/gpu\1\.lock\)", log.read_text()), log

    # The same numbers and the same masks as the local run.
    local = tmp_path / "local/results/tiny"
    for stage in ("cam", "aff_labels", "rw", "pseudo", "seg", "seg_full"):
        a = json.loads((run / f"metrics/{stage}.json").read_text())
        b = json.loads((local / f"metrics/{stage}.json").read_text())
        assert (a["miou"], a["per_class"]) == (b["miou"], b["per_class"]), stage
    masks = sorted(p.relative_to(run) for p in run.glob("pseudo/shard-*/*.png"))
    assert len(masks) == CONFIG["demo"]["num_train"]
    for mask in masks + sorted(p.relative_to(run) for p in run.glob("pred/seg/shard-*/*.png")):
        assert np.array_equal(
            np.asarray(Image.open(run / mask)), np.asarray(Image.open(local / mask))
        )
    assert (run / "report/examples.png").exists() and (run / "report/stages.html").exists()
