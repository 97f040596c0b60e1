"""What the workflow plans for a config (Snakemake dry runs, no job runs), the configs it
refuses before the first job, and the schema's defaults against the stages' own."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_workflow import TINY, planned_jobs, report_jobs

from wsss.stages import registry
from wsss.workflow.experiments import merge

REPO = Path(__file__).resolve().parent.parent
SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())


def dry_run(workdir: Path, extra: dict, *flags: str) -> subprocess.CompletedProcess:
    """``snakemake -n`` in ``workdir`` on the tiny demo config with ``extra`` merged in
    (``flags``: more Snakemake options)."""
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(merge(TINY, extra)))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-n",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(workdir),
        "--configfile",
        str(config),
        "--cores",
        "1",
        *flags,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, timeout=120)


# Planned once for every experiment however many there are.
ONCE = {"make_demo": 1, "prepare_dataset": 1, "experiment_plan": 1, "compare": 1, "all": 1}


def test_two_experiments_share_everything_before_the_random_walk(tmp_path: Path) -> None:
    proc = dry_run(
        tmp_path,
        {
            "experiments": [
                {"name": "beta8", "overrides": {"affinity": {"random_walk": {"beta": 8}}}},
                {"name": "beta4", "overrides": {"affinity": {"random_walk": {"beta": 4}}}},
            ]
        },
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout)
    assert jobs == {
        **ONCE,
        "train_cam": 1,
        "infer_cam": 2,  # num_shards 2
        "eval_cam": 1,
        "affinity_labels": 2,
        "eval_aff_labels": 1,
        "train_aff": 1,
        "random_walk": 4,  # per experiment and shard
        "eval_rw": 2,
        "pseudo_masks": 4,
        "eval_pseudo": 2,
        "train_seg": 3,  # two weak, one shared bound
        "infer_seg": 6,
        "eval_seg": 3,
        **report_jobs(2),
    }
    # the shared artefacts are made in the first experiment's directory
    out = proc.stdout
    assert "results/tiny/beta8/cam/model.pt" in out
    assert "results/tiny/beta4/cam/model.pt" not in out
    assert "results/tiny/beta4/rw/shard-1.h5" in out
    assert "results/tiny/beta4/seg_full/model.pt" not in out
    assert "results/tiny/comparison/comparison.html" in out


def test_variants_that_stop_at_the_pseudo_masks_train_no_segmentation(tmp_path: Path) -> None:
    """An ablation whose variants stop at ``last_step: pseudo``: only the first experiment
    trains the segmentation networks; the comparison still lists every variant."""
    variant = {"last_step": "pseudo", "cam": {"train": {"sampling_weight": 0.2}}}
    proc = dry_run(
        tmp_path,
        {"experiments": [{"name": "plain"}, {"name": "sampling", "overrides": variant}]},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout)
    assert jobs["train_cam"] == 2 and jobs["train_aff"] == 2 and jobs["eval_pseudo"] == 2
    assert jobs["train_seg"] == 2  # the plain network's weak and full
    assert jobs["eval_seg"] == 2
    assert {rule: jobs[rule] for rule in report_jobs(2, examples=1)} == report_jobs(2, examples=1)
    assert "results/tiny/sampling/seg/model.pt" not in proc.stdout


def test_progressive_patch_learning_trains_its_stages_in_order(tmp_path: Path) -> None:
    """progressive [4, 2] then patches 1: three CAM trainings, each one a job of its own
    that starts from the previous one's model file."""
    proc = dry_run(tmp_path, {"cam": {"train": {"progressive": [4, 2], "patches": 1}}}, "-p")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout)
    assert jobs["train_cam_stage"] == 2 and jobs["train_cam"] == 1
    commands = [line for line in proc.stdout.splitlines() if "wsss train-cam" in line]
    assert len(commands) == 3
    by_out = {c.split("--out ")[1].split()[0]: c for c in commands}
    stage0 = by_out["results/tiny/cam/stage-0/model.pt"]
    stage1 = by_out["results/tiny/cam/stage-1/model.pt"]
    last = by_out["results/tiny/cam/model.pt"]
    assert "--init" not in stage0 and "--patches 4" in stage0
    assert "--init results/tiny/cam/stage-0/model.pt" in stage1 and "--patches 2" in stage1
    assert "--init results/tiny/cam/stage-1/model.pt" in last and "--patches 1" in last
    assert all("--progressive" not in c for c in commands)


def test_a_repeated_experiment_trains_once_per_seed(tmp_path: Path) -> None:
    proc = dry_run(tmp_path, {"experiments": [{"name": "rep", "seeds": [0, 1]}]})
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout)
    # the seed changes every training: only the dataset is shared
    assert jobs == {
        **ONCE,
        "train_cam": 2,
        "infer_cam": 4,
        "eval_cam": 2,
        "affinity_labels": 4,
        "eval_aff_labels": 2,
        "train_aff": 2,
        "random_walk": 4,
        "eval_rw": 2,
        "pseudo_masks": 4,
        "eval_pseudo": 2,
        "train_seg": 4,
        "infer_seg": 8,
        "eval_seg": 4,
        **report_jobs(2),
    }
    assert "results/tiny/rep-seed0/cam/model.pt" in proc.stdout
    assert "results/tiny/rep-seed1/cam/model.pt" in proc.stdout


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"pseudo": {"alpha": 3}}, "pseudo.alpha: 3 is not among affinity.random_walk.alphas"),
        (
            {"cam": {"train": {"backbone": "resnet50", "weights": "imagenet"}}},
            "cam.train.weights: no offline ImageNet weights for resnet50",
        ),
        (
            {"dataset": {"kind": "voc", "root": "no/such/dir"}},
            "dataset.root: no/such/dir is not an existing directory",
        ),
        # an experiment's settings are checked too, schema and cross-checks alike
        (
            {
                "experiments": [
                    {"name": "a"},
                    {"name": "b", "overrides": {"cam": {"train": {"epochz": 3}}}},
                ]
            },
            "'epochz' was unexpected",
        ),
        (
            {"experiments": [{"name": "a"}, {"name": "b", "overrides": {"pseudo": {"alpha": 3}}}]},
            "pseudo.alpha: 3 is not among affinity.random_walk.alphas",
        ),
    ],
)
def test_a_bad_config_stops_before_any_job_naming_the_key(
    tmp_path: Path, extra: dict, named: str
) -> None:
    proc = dry_run(tmp_path, extra)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert named in output, output[-3000:]
    assert "Job stats" not in output


def test_an_unknown_override_is_named_with_its_section(tmp_path: Path) -> None:
    proc = dry_run(
        tmp_path,
        {
            "experiments": [
                {"name": "a"},
                {"name": "b", "overrides": {"seg": {"infer": {"flipp": 0}}}},
            ]
        },
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "'flipp' was unexpected" in output
    assert "['seg']['infer']" in output


# ---- the schema's defaults are the stages' defaults ---------------------------------------

SECTIONS = {s.section: s.params for s in registry().values() if s.section}
# Params fields a rule sets itself rather than from the config section (and the flag it uses).
SET_BY_RULE = {"seg.train": {"supervision": "--supervision {params.supervision}"}}
# Keys of a section that the rules read themselves and do not pass on as flags (and the
# expression of the rules that takes them out).
READ_BY_RULES = {"cam.train": {"progressive": 'train.pop("progressive")'}}


def schema_section(dotted: str) -> dict:
    node = SCHEMA
    for part in dotted.split("."):
        node = node["properties"][part]
    return node["properties"]


def params_of(cls: type) -> dict[str, object]:
    return {f.name: f.default for f in dataclasses.fields(cls)}


def same(schema_value: object, default: object) -> bool:
    """Equal as settings: tuples as lists, ints and floats numerically, booleans as such."""
    if isinstance(default, tuple):
        default = list(default)
    if isinstance(schema_value, list) and isinstance(default, list):
        return len(schema_value) == len(default) and all(
            same(a, b) for a, b in zip(schema_value, default)
        )
    if isinstance(schema_value, bool) or isinstance(default, bool):
        return type(schema_value) is type(default) and schema_value == default
    return schema_value == default


def test_same_compares_settings() -> None:
    assert same([1, 2], (1.0, 2.0))
    assert same(3, 3.0)
    assert not same(True, 1)
    assert not same([1, 2], (1.0,))
    assert not same(16, 16.5)
    assert same("code", "code")


@pytest.mark.parametrize("section", SECTIONS)
def test_schema_defaults_are_the_stage_defaults(section: str) -> None:
    properties = schema_section(section)
    fields = params_of(SECTIONS[section])
    rule_set = SET_BY_RULE.get(section, {})
    differences = [
        (key, spec["default"], fields[key])
        for key, spec in properties.items()
        if key in fields and "default" in spec and not same(spec["default"], fields[key])
    ]
    assert differences == [], f"{section}: (key, schema, dataclass)"
    # every key of the section becomes a flag of the stage: it must be a field
    assert sorted(set(properties) - set(fields) - set(READ_BY_RULES.get(section, {}))) == []
    # every field the config can set is in the section, with its default
    assert sorted(set(fields) - set(properties) - set(rule_set)) == [], section
    assert [key for key, spec in properties.items() if "default" not in spec] == [], section
    for key in rule_set:
        assert key not in properties


def test_fields_set_by_rules_are_passed_by_the_rule() -> None:
    rules = "".join(p.read_text() for p in (REPO / "workflow/rules").glob("*.smk"))
    for fields in (*SET_BY_RULE.values(), *READ_BY_RULES.values()):
        for flag in fields.values():
            assert flag in rules


@pytest.mark.parametrize("device, gpus", [("cpu", 0), ("auto", 1)])
def test_a_cpu_run_requests_no_gpu_even_with_the_slurm_profile(
    tmp_path: Path, device: str, gpus: int
) -> None:
    """Every network job asks for a GPU (Snakemake's ``gpu`` resource, --gpus=1 on SLURM)
    unless the run's device is the CPU: then none does, so a cluster queues it as a CPU job."""
    proc = dry_run(
        tmp_path,
        {"device": device},
        "--workflow-profile",
        str(REPO / "profiles/slurm"),
        "--cores",
        "2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    requests = re.findall(r"resources: .*", proc.stdout)
    assert requests, proc.stdout[-2000:]
    asking = [r for r in requests if re.search(r"\bgpu=1\b", r)]
    if gpus:
        assert len(asking) >= 5  # CAM and AffinityNet training, CAM inference, random walk, ...
    else:
        assert asking == []


def configured(*files: str) -> dict:
    """config.yaml with ``files`` merged in order, as Snakemake's ``--configfile``."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for name in files:
        config = merge(config, yaml.safe_load((REPO / name).read_text()) or {})
    return config


def test_the_msrc21_preset_trains_the_hfpl_recipe_its_seeds_measured() -> None:
    """configs/msrc21.yaml's CAM network is the `both-multinomial-wide` experiment whose
    three seeds docs/benchmarks.md reports, in every setting but the memory layout (the
    seeds ran in NCHW); configs/plain.yaml takes the add-on away again."""
    from wsss.workflow.experiments import expand

    preset = configured("configs/msrc21.yaml")["cam"]["train"]
    seeds = expand(configured("configs/msrc21.yaml", "configs/seeds_hfpl_msrc21.yaml"))
    measured = seeds["seeds_hfpl_msrc21/both-multinomial-wide-seed0"].config["cam"]["train"]
    assert measured.pop("channels_last") is False
    assert measured.pop("seed") == 0
    assert preset == measured
    assert preset["sampling_weight"] > 0 and preset["similarity_weight"] > 0
    plain = configured("configs/msrc21.yaml", "configs/plain.yaml")["cam"]["train"]
    assert plain["sampling_weight"] == plain["similarity_weight"] == 0


def beta(config: dict) -> float:
    """The random walk's beta of a merged config."""
    return config["affinity"]["random_walk"]["beta"]


def test_the_msrc21_preset_walks_at_the_beta_its_train_split_chose() -> None:
    """configs/msrc21.yaml's random walk is recipe_msrc21's `recipe` (beta 12), chosen on
    the train split against its `beta8` experiment; configs/plain.yaml, and the earlier
    tables' configs, walk at the paper's beta 8 as they were measured."""
    from wsss.workflow.experiments import expand

    assert beta(configured("configs/msrc21.yaml")) == 12
    recipe = expand(configured("configs/msrc21.yaml", "configs/recipe_msrc21.yaml"))
    assert {beta(recipe[f"recipe_msrc21/recipe-seed{s}"].config) for s in range(3)} == {12}
    assert beta(recipe["recipe_msrc21/beta8-seed0"].config) == 8
    assert beta(configured("configs/msrc21.yaml", "configs/plain.yaml")) == 8
    for earlier in ("seeds_msrc21", "seeds_hfpl_msrc21", "ablation_hfpl_msrc21"):
        runs = expand(configured("configs/msrc21.yaml", f"configs/{earlier}.yaml"))
        assert {beta(e.config) for e in runs.values()} == {8}, earlier


def test_the_demo_walks_at_beta_12_and_its_earlier_tables_at_8() -> None:
    """config.yaml's random walk is seeds_demo's `beta12`; its `plain` and the demo's
    earlier tables walk at the paper's beta 8, as they were measured."""
    from wsss.workflow.experiments import expand

    assert beta(configured()) == 12
    seeds = expand(configured("configs/seeds_demo.yaml"))
    assert {beta(seeds[f"seeds_demo/beta12-seed{s}"].config) for s in range(3)} == {12}
    assert {beta(seeds[f"seeds_demo/plain-seed{s}"].config) for s in range(3)} == {8}
    for earlier in ("seeds_hfpl_demo", "ablation_hfpl_demo", "ablation_ppl_demo"):
        runs = expand(configured(f"configs/{earlier}.yaml"))
        assert {beta(e.config) for e in runs.values()} == {8}, earlier
    assert beta(expand(configured("configs/ablation_demo.yaml"))["ablation_demo/beta8"].config) == 8
