"""Experiments (wsss.workflow.experiments) and the pipeline's artefact graph
(wsss.workflow.pipeline): expanding a config into experiments, which experiment owns each
artefact, and the comparison plan."""

from __future__ import annotations

import copy
import graphlib
from pathlib import Path

import pytest
from config_defaults import demo_config

from wsss.workflow.experiments import TRAININGS, Experiment, expand, lookup, merge, owner, plan
from wsss.workflow.pipeline import ARTEFACTS, METHODS, STEPS, all_steps, networks_of, steps_of

REPO = Path(__file__).resolve().parent.parent
BASE = demo_config()

PSA = ARTEFACTS["psa"]
EVERY_ARTEFACT = set(PSA)


def base() -> dict:
    """A fresh copy of config.yaml."""
    return copy.deepcopy(BASE)


def with_experiments(*entries: dict) -> dict:
    config = base()
    config["experiments"] = copy.deepcopy(list(entries))
    return config


def shared_with_first(experiments: dict[str, Experiment], path: str) -> set[str]:
    """The artefacts (of the psa chain) that ``path`` reads from the first experiment's
    directory."""
    first = next(iter(experiments))
    assert all(owner(experiments, first, a) == first for a in PSA)
    return {a for a in PSA if owner(experiments, path, a) == first}


def two(overrides: dict) -> dict[str, Experiment]:
    """Experiment 'a' (the base) and 'b' (the base with ``overrides``)."""
    return expand(with_experiments({"name": "a"}, {"name": "b", "overrides": overrides}))


# ---- expand -------------------------------------------------------------------------------


def test_without_experiments_the_run_is_its_only_experiment() -> None:
    config = base()
    found = expand(config)
    assert list(found) == ["demo"]
    exp = found["demo"]
    assert (exp.path, exp.name, exp.seed) == ("demo", "demo", None)
    assert exp.config == BASE
    # an empty list is the same as none
    config["experiments"] = []
    found = expand(config)
    assert list(found) == ["demo"]
    assert "experiments" not in found["demo"].config
    assert found["demo"].config == BASE


def test_experiments_get_their_directories_and_seeds() -> None:
    config = with_experiments(
        {"name": "beta8"},
        {"name": "beta4", "overrides": {"affinity": {"random_walk": {"beta": 4}}}, "seeds": [3, 1]},
    )
    found = expand(config)
    assert list(found) == ["demo/beta8", "demo/beta4-seed3", "demo/beta4-seed1"]
    assert [(e.path, e.name, e.seed) for e in found.values()] == [
        ("demo/beta8", "beta8", None),
        ("demo/beta4-seed3", "beta4", 3),
        ("demo/beta4-seed1", "beta4", 1),
    ]
    for exp in found.values():
        assert "experiments" not in exp.config
        assert exp.config["run"] == "demo"


def test_overrides_merge_recursively_and_leave_the_base_alone() -> None:
    config = with_experiments(
        {"name": "plain"},
        {
            "name": "changed",
            "overrides": {
                "affinity": {"random_walk": {"beta": 4, "alphas": [2, 16]}},
                "cam": {"infer": {"scales": [1.0]}},
                "num_shards": 3,
            },
        },
    )
    before = copy.deepcopy(config)
    found = expand(config)
    assert config == before  # neither the config nor its overrides changed

    plain, changed = found["demo/plain"].config, found["demo/changed"].config
    assert plain == {k: v for k, v in BASE.items()}
    walk = changed["affinity"]["random_walk"]
    # nested keys replaced, their siblings kept
    assert walk == {
        "radius": 5,
        "beta": 4,
        "logt": 8,
        "alphas": [2, 16],
        "amp": True,
        "amp_dtype": "bfloat16",
    }
    # lists replaced whole, not merged element-wise or appended
    assert changed["cam"]["infer"]["scales"] == [1.0]
    assert changed["cam"]["infer"]["flip"] is True
    assert changed["num_shards"] == 3
    # everything not overridden is the base's
    assert changed["affinity"]["train"] == BASE["affinity"]["train"]
    assert changed["cam"]["train"] == BASE["cam"]["train"]
    assert changed["seg"] == BASE["seg"]
    # the experiments' configs are independent copies
    changed["cam"]["train"]["lr"] = 99.0
    changed["affinity"]["random_walk"]["alphas"].append(64)
    assert plain["cam"]["train"]["lr"] == 0.01
    assert config["experiments"][1]["overrides"]["affinity"]["random_walk"]["alphas"] == [2, 16]
    assert BASE["cam"]["train"]["lr"] == 0.01


def test_merge_replaces_a_value_of_another_type_whole() -> None:
    merged = merge({"a": {"b": 1, "c": [1, 2]}, "d": 1}, {"a": {"c": [3]}, "d": {"e": 2}})
    assert merged == {"a": {"b": 1, "c": [3]}, "d": {"e": 2}}
    assert merge({"a": {"b": 1}}, {"a": 5}) == {"a": 5}
    assert lookup(merged, "a.b") == 1
    assert lookup(merged, "a.x") is None
    assert lookup(merged, "a.b.c") is None


def test_seeds_set_every_training_seed() -> None:
    config = base()
    for key in TRAININGS:
        lookup(config, key)["seed"] = 7
    config["experiments"] = [{"name": "base"}, {"name": "rep", "seeds": [0, 1, 2]}]
    found = expand(config)
    assert TRAININGS == ("cam.train", "affinity.train", "seg.train", "wsfcn.train")
    for seed in (0, 1, 2):
        settings = found[f"demo/rep-seed{seed}"].config
        assert [lookup(settings, key)["seed"] for key in TRAININGS] == [seed] * 4
        # nothing else changes
        for key in TRAININGS:
            rest = {k: v for k, v in lookup(settings, key).items() if k != "seed"}
            assert rest == {k: v for k, v in lookup(BASE, key).items() if k != "seed"}
        assert settings["demo"]["seed"] == BASE["demo"]["seed"]
    # an experiment without seeds keeps the config's
    assert [lookup(found["demo/base"].config, k)["seed"] for k in TRAININGS] == [7] * 4
    assert [lookup(config, k)["seed"] for k in TRAININGS] == [7] * 4
    # the seeds' configs are separate objects
    found["demo/rep-seed0"].config["cam"]["train"]["lr"] = 1.0
    assert found["demo/rep-seed1"].config["cam"]["train"]["lr"] == 0.01


@pytest.mark.parametrize(
    ("entries", "twice"),
    [
        ([{"name": "a"}, {"name": "a", "overrides": {"num_shards": 3}}], "'a'"),
        ([{"name": "a", "seeds": [1, 1]}], "'a-seed1'"),
        ([{"name": "a-seed0"}, {"name": "a", "seeds": [0]}], "'a-seed0'"),
    ],
)
def test_a_duplicate_experiment_is_refused(entries: list[dict], twice: str) -> None:
    with pytest.raises(ValueError, match=f"{twice} is listed twice"):
        expand(with_experiments(*entries))


# ---- owner --------------------------------------------------------------------------------


def test_a_random_walk_setting_shares_everything_before_the_walk() -> None:
    found = two({"affinity": {"random_walk": {"beta": 4}}})
    shared = shared_with_first(found, "demo/b")
    for artefact in (
        "dataset",
        "cam_model",
        "cam",
        "cam_eval",
        "aff_labels",
        "aff_model",
        "seg_full_model",
        "seg_full_eval",
    ):
        assert owner(found, "demo/b", artefact) == "demo/a", artefact
    for artefact in ("rw", "pseudo", "seg_model", "seg_eval"):
        assert owner(found, "demo/b", artefact) == "demo/b", artefact
    assert shared == {
        "dataset",
        "cam_model",
        "cam",
        "cam_eval",
        "aff_labels",
        "aff_eval",
        "aff_model",
        "seg_full_model",
        "seg_full_pred",
        "seg_full_eval",
    }


def test_a_cam_training_setting_shares_only_the_dataset_and_the_bound() -> None:
    found = two({"cam": {"train": {"lr": 0.02}}})
    assert shared_with_first(found, "demo/b") == {
        "dataset",
        "seg_full_model",
        "seg_full_pred",
        "seg_full_eval",
    }


def test_a_cam_scoring_setting_shares_the_cams_but_not_their_score() -> None:
    found = two({"cam": {"eval": {"bg_values": [1, 2]}}})
    assert owner(found, "demo/b", "cam") == "demo/a"
    assert owner(found, "demo/b", "cam_eval") == "demo/b"
    assert shared_with_first(found, "demo/b") == EVERY_ARTEFACT - {"cam_eval"}


def test_a_setting_that_does_not_change_content_shares_everything() -> None:
    found = two({"device": "cpu"})
    assert found["demo/b"].config["device"] == "cpu" != found["demo/a"].config["device"]
    assert shared_with_first(found, "demo/b") == EVERY_ARTEFACT


def test_seeds_share_only_the_dataset() -> None:
    found = expand(with_experiments({"name": "s", "seeds": [0, 1]}))
    # seed 0 is the config's own seed, but each seed is its own experiment
    assert shared_with_first(found, "demo/s-seed1") == {"dataset"}


def test_the_owner_is_the_first_agreeing_experiment() -> None:
    found = expand(
        with_experiments(
            {"name": "a", "overrides": {"affinity": {"random_walk": {"beta": 4}}}},
            {"name": "b"},
            {"name": "c", "overrides": {"affinity": {"random_walk": {"beta": 4}}}},
            {"name": "d"},
        )
    )
    assert owner(found, "demo/d", "rw") == "demo/b"
    assert owner(found, "demo/c", "rw") == "demo/a"
    assert owner(found, "demo/d", "cam") == "demo/a"
    assert owner(found, "demo/b", "rw") == "demo/b"


# ---- plan ---------------------------------------------------------------------------------


def test_plan_points_at_the_owners_files() -> None:
    found = expand(
        with_experiments(
            {"name": "beta8"},
            {"name": "beta4", "overrides": {"affinity": {"random_walk": {"beta": 4}}}},
        )
    )
    out = plan(found, "results")
    keys = ["cam", "aff_labels", "rw", "pseudo", "seg", "seg_full"]
    assert [s["key"] for s in out["steps"]] == keys
    assert out["steps"][0] == {"key": "cam", "title": "CAMs"}
    first, second = out["experiments"]
    assert (first["name"], first["group"], first["seed"]) == ("beta8", "beta8", None)
    assert (second["name"], second["group"], second["seed"]) == ("beta4", "beta4", None)

    assert first["shared"] == {}
    assert first["metrics"] == {
        key: f"results/demo/beta8/metrics/{key}.json"
        for key in ("cam", "aff_labels", "rw", "pseudo", "seg", "seg_full")
    }
    assert second["shared"] == {"cam": "beta8", "aff_labels": "beta8", "seg_full": "beta8"}
    # Every rule whose job ran for the first experiment only is marked as reused.
    assert first["reused"] == {}
    assert set(second["reused"]) == {
        "prepare_dataset",
        "train_cam",
        "infer_cam",
        "eval_cam",
        "affinity_labels",
        "eval_aff_labels",
        "train_aff",
        "train_seg_full",
        "infer_seg_full",
        "eval_seg_full",
    }
    assert set(second["reused"].values()) == {"beta8"}
    assert second["metrics"] == {
        "cam": "results/demo/beta8/metrics/cam.json",
        "aff_labels": "results/demo/beta8/metrics/aff_labels.json",
        "rw": "results/demo/beta4/metrics/rw.json",
        "pseudo": "results/demo/beta4/metrics/pseudo.json",
        "seg": "results/demo/beta4/metrics/seg.json",
        "seg_full": "results/demo/beta8/metrics/seg_full.json",
    }

    bench = second["benchmarks"]
    # every rule's files (progressive CAM stages: none without a schedule)
    rules = {rule for a in PSA.values() for rule in a.rules}
    assert set(bench) == rules - {"train_cam_stage"}
    assert bench["infer_cam"] == [
        "results/demo/beta8/benchmarks/infer_cam-0.tsv",
        "results/demo/beta8/benchmarks/infer_cam-1.tsv",
    ]
    assert bench["random_walk"] == [
        "results/demo/beta4/benchmarks/random_walk-0.tsv",
        "results/demo/beta4/benchmarks/random_walk-1.tsv",
    ]
    assert bench["train_cam"] == ["results/demo/beta8/benchmarks/train_cam.tsv"]
    assert bench["train_seg"] == ["results/demo/beta4/benchmarks/train_seg.tsv"]
    assert bench["train_seg_full"] == ["results/demo/beta8/benchmarks/train_seg_full.tsv"]
    assert bench["eval_rw"] == ["results/demo/beta4/benchmarks/eval_rw.tsv"]
    for artefact in PSA.values():
        for rule in set(artefact.rules) - {"train_cam_stage"}:
            assert len(bench[rule]) == (2 if artefact.sharded else 1), rule
            assert len(first["benchmarks"][rule]) == (2 if artefact.sharded else 1), rule
            assert all(p.startswith("results/demo/beta8/") for p in first["benchmarks"][rule])


def test_plan_counts_the_owners_shards() -> None:
    found = expand(
        with_experiments({"name": "two"}, {"name": "three", "overrides": {"num_shards": 3}})
    )
    first, second = plan(found, "out")["experiments"]
    assert second["benchmarks"]["infer_cam"] == [
        f"out/demo/three/benchmarks/infer_cam-{k}.tsv" for k in range(3)
    ]
    assert first["benchmarks"]["infer_cam"] == [
        f"out/demo/two/benchmarks/infer_cam-{k}.tsv" for k in range(2)
    ]
    # the CAM network does not depend on the shards
    assert second["benchmarks"]["train_cam"] == ["out/demo/two/benchmarks/train_cam.tsv"]
    # the predictions of the bound do not depend on the CAMs: read with the owner's shards
    assert second["shared"] == {"seg_full": "two"}
    assert second["benchmarks"]["infer_seg_full"] == [
        f"out/demo/two/benchmarks/infer_seg_full-{k}.tsv" for k in range(2)
    ]
    assert second["benchmarks"]["infer_seg"] == [
        f"out/demo/three/benchmarks/infer_seg-{k}.tsv" for k in range(3)
    ]


def test_plan_without_the_bound_and_with_seeds() -> None:
    config = with_experiments({"name": "s", "seeds": [0, 1]})
    config["seg"]["full_bound"] = False
    out = plan(expand(config), "results")
    assert [s["key"] for s in out["steps"]] == ["cam", "aff_labels", "rw", "pseudo", "seg"]
    assert [(e["name"], e["group"], e["seed"]) for e in out["experiments"]] == [
        ("s-seed0", "s", 0),
        ("s-seed1", "s", 1),
    ]
    assert out["experiments"][1]["shared"] == {}
    assert out["experiments"][1]["metrics"]["seg"] == "results/demo/s-seed1/metrics/seg.json"
    assert "seg_full" not in out["experiments"][1]["metrics"]


# ---- the artefact graph -------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_the_artefact_graph_is_closed_and_acyclic(method: str) -> None:
    artefacts = ARTEFACTS[method]
    for name, artefact in artefacts.items():
        for source in artefact.sources:
            assert source in artefacts, (name, source)
        assert artefact.rules, name
    for step in STEPS[method]:
        assert step.artefact in artefacts, (method, step.key)
        assert step.split in ("train", "val"), step.key
    graph = {name: artefact.sources for name, artefact in artefacts.items()}
    order = list(graphlib.TopologicalSorter(graph).static_order())  # CycleError on a cycle
    assert set(order) == set(artefacts)
    assert order.index("dataset") == 0
    # every rule makes one artefact only
    rules = [rule for a in artefacts.values() for rule in a.rules]
    assert len(rules) == len(set(rules))


def test_a_rule_makes_the_same_artefact_in_every_method() -> None:
    made = {}
    for artefacts in ARTEFACTS.values():
        for name, artefact in artefacts.items():
            for rule in artefact.rules:
                assert made.setdefault(rule, name) == name, rule


def test_every_artefact_key_is_a_config_setting() -> None:
    # a misspelt key would read None for every experiment and share what differs
    for artefacts in ARTEFACTS.values():
        for name, artefact in artefacts.items():
            for key in artefact.keys:
                assert lookup(BASE, key) is not None, (name, key)


def test_steps_of_follows_the_bound() -> None:
    config = base()
    assert [s.key for s in steps_of(config)][-1] == "seg_full"
    config["seg"]["full_bound"] = False
    assert "seg_full" not in [s.key for s in steps_of(config)]
    config["method"] = "nope"
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        steps_of(config)


def test_last_step_ends_the_run_early_and_drops_the_networks_it_does_not_need() -> None:
    config = base()
    config["last_step"] = "pseudo"
    assert [s.key for s in steps_of(config)] == ["cam", "aff_labels", "rw", "pseudo"]
    assert set(networks_of(config)) == {"cam_model", "aff_model"}
    config["last_step"] = "cam"
    assert set(networks_of(config)) == {"cam_model"}
    config["last_step"] = None
    assert set(networks_of(config)) == {"cam_model", "aff_model", "seg_model", "seg_full_model"}
    config["last_step"] = "segmentation"
    with pytest.raises(ValueError, match="last_step: unknown step 'segmentation'"):
        steps_of(config)


def test_plan_lists_the_benchmarks_of_every_progressive_stage() -> None:
    config = with_experiments(
        {"name": "ppl", "overrides": {"cam": {"train": {"progressive": [4, 2]}}}}
    )
    found = plan(expand(config), "results")["experiments"][0]["benchmarks"]
    assert found["train_cam_stage"] == [
        "results/demo/ppl/benchmarks/train_cam_stage-0.tsv",
        "results/demo/ppl/benchmarks/train_cam_stage-1.tsv",
    ]
    assert found["train_cam"] == ["results/demo/ppl/benchmarks/train_cam.tsv"]


# ---- method wsfcn -------------------------------------------------------------------------


def test_wsfcn_steps_follow_the_hybrid_switch_and_the_last_step() -> None:
    config = base()
    config["method"] = "wsfcn"
    assert [s.key for s in steps_of(config)] == ["wsfcn_train", "wsfcn_val", "seg_full"]
    assert set(networks_of(config)) == {"wsfcn_model", "seg_full_model"}
    config["wsfcn"]["hybrid"] = True
    assert [s.key for s in steps_of(config)] == ["wsfcn_train", "wsfcn_val", "seg", "seg_full"]
    assert networks_of(config) == {
        "wsfcn_model": "wsfcn/model.pt",
        "seg_model": "seg/model.pt",
        "seg_full_model": "seg_full/model.pt",
    }
    config["last_step"] = "wsfcn_train"
    assert [s.key for s in steps_of(config)] == ["wsfcn_train"]
    assert set(networks_of(config)) == {"wsfcn_model"}
    config["wsfcn"]["hybrid"] = False
    config["last_step"] = "seg"
    with pytest.raises(ValueError, match="last_step: step 'seg' is off: wsfcn.hybrid"):
        steps_of(config)


def test_every_step_in_one_order_that_keeps_each_methods() -> None:
    assert list(all_steps()) == [
        "cam",
        "aff_labels",
        "rw",
        "pseudo",
        "wsfcn_train",
        "wsfcn_val",
        "seg",
        "seg_full",
    ]


def test_methods_share_the_dataset_and_the_bound_and_nothing_else() -> None:
    found = expand(
        with_experiments(
            {"name": "psa"},
            {"name": "hybrid", "overrides": {"method": "wsfcn", "wsfcn": {"hybrid": True}}},
            {"name": "wsfcn", "overrides": {"method": "wsfcn"}},
        )
    )
    for artefact in ("dataset", "seg_full_model", "seg_full_eval"):
        assert owner(found, "demo/hybrid", artefact) == "demo/psa", artefact
    # the segmentation network of the hybrid learns from WS-FCN's masks, psa's from its own
    assert owner(found, "demo/hybrid", "seg_model") == "demo/hybrid"
    for artefact in ("wsfcn_model", "wsfcn_train", "wsfcn_val_eval"):
        assert owner(found, "demo/wsfcn", artefact) == "demo/hybrid", artefact
    with pytest.raises(ValueError, match="method wsfcn makes no artefact 'cam'"):
        owner(found, "demo/wsfcn", "cam")

    out = plan(found, "results")
    assert [s["key"] for s in out["steps"]] == list(all_steps())  # the order tested above
    psa, hybrid, wsfcn = out["experiments"]
    assert set(psa["metrics"]) == {"cam", "aff_labels", "rw", "pseudo", "seg", "seg_full"}
    assert set(wsfcn["metrics"]) == {"wsfcn_train", "wsfcn_val", "seg_full"}
    assert hybrid["metrics"]["seg"] == "results/demo/hybrid/metrics/seg.json"
    assert wsfcn["metrics"]["wsfcn_val"] == "results/demo/hybrid/metrics/wsfcn_val.json"
    assert wsfcn["shared"] == {"wsfcn_train": "hybrid", "wsfcn_val": "hybrid", "seg_full": "psa"}
    # the benchmarks of the rules that made what each experiment reads, and no others
    assert set(wsfcn["benchmarks"]) == {
        "prepare_dataset",
        "train_wsfcn",
        "infer_wsfcn_train",
        "eval_wsfcn_train",
        "infer_wsfcn_val",
        "eval_wsfcn_val",
        "train_seg_full",
        "infer_seg_full",
        "eval_seg_full",
    }
    assert wsfcn["benchmarks"]["infer_wsfcn_val"] == [
        "results/demo/hybrid/benchmarks/infer_wsfcn_val-0.tsv",
        "results/demo/hybrid/benchmarks/infer_wsfcn_val-1.tsv",
    ]
    assert set(hybrid["benchmarks"]) == set(wsfcn["benchmarks"]) | {
        "train_seg",
        "infer_seg",
        "eval_seg",
    }
    assert "train_cam" in psa["benchmarks"] and "train_wsfcn" not in psa["benchmarks"]
