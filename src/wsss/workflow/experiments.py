"""Experiments: several variants of the settings, each possibly over several seeds, run by
one workflow, sharing every artefact whose settings and inputs agree.

A config may list::

    experiments:
      - name: beta8                      # results/<run>/beta8/
      - name: beta4
        overrides: {affinity: {random_walk: {beta: 4}}}
        seeds: [0, 1, 2]                 # results/<run>/beta4-seed0/, ...

Each experiment's config is the base config with its ``overrides`` merged in (nested keys
replace, lists are replaced whole); ``seeds`` sets the seed of every training. Without
``experiments`` the run is its own single experiment (``results/<run>/``).

An experiment honours every setting it overrides or is refused by name: the settings of
the whole run (``results``, ``run``, ``threads``, ``resources``) cannot differ per
experiment, and a setting the experiment's method and steps never read (``cam`` in a
``method: wsfcn`` experiment, ``demo`` without ``dataset.kind: demo``) would silently do
nothing. An experiment whose ``demo`` settings differ from the base config's gets its
own demo dataset, ``<dataset.root>-<name>``.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass

from wsss.workflow.pipeline import (
    ARTEFACTS,
    REPEATED,
    STEPS,
    all_steps,
    artefacts_of,
    lookup,
    method_of,
    steps_of,
)

TRAININGS = ("cam.train", "affinity.train", "seg.train", "wsfcn.train")
# Names that become directories (run, experiment): no separators, no "." or "..", no
# leading dot or dash (the schema's pattern for run and experiments[].name agrees).
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# Settings of the whole run: the workflow reads them once, from the base config.
RUN_SETTINGS = ("results", "run", "threads", "resources", "experiments")
# Sections whose keys an experiment's artefacts read (pipeline.ARTEFACTS keys); an override
# of one of them that no artefact of the experiment reads is refused.
CHECKED_SECTIONS = ("cam", "affinity", "pseudo", "seg", "wsfcn", "demo")


@dataclass(frozen=True)
class Experiment:
    """One variant at one seed: ``path`` is its directory under the results directory."""

    path: str
    name: str
    seed: int | None
    config: dict


def merge(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` merged in, recursively (a new dict)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def check_name(key: str, name: object) -> None:
    """Refuse a run or experiment name that is not a plain directory name."""
    if not (isinstance(name, str) and NAME.fullmatch(name)):
        raise ValueError(
            f"{key}: {name!r} is not a valid name (letters, digits, '_', '.' and '-', not "
            "starting with '.' or '-'; it becomes a directory under the results directory)"
        )


def leaf_keys(section: dict, prefix: str = "") -> list[str]:
    """The dotted keys of the values of a nested dict (``{"a": {"b": 1}}`` -> ``a.b``)."""
    keys = []
    for key, value in section.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            keys.extend(leaf_keys(value, f"{dotted}."))
        else:
            keys.append(dotted)
    return keys


def used_keys(config: dict) -> set[str]:
    """The config keys the artefacts of ``config`` are made with, and the switches of its
    method's steps."""
    graph = ARTEFACTS[method_of(config)]
    used = {key for name in artefacts_of(config) for key in graph[name].keys}
    used |= {s.switch for s in STEPS[method_of(config)] if s.switch}
    return used


def check_overrides(name: str, overrides: dict, config: dict) -> None:
    """Refuse an override that the experiment ``name`` (merged settings ``config``) would
    ignore: a setting of the whole run, or one its method and steps never read."""
    problems = []
    for key in overrides:
        if key in RUN_SETTINGS:
            problems.append(
                f"experiment '{name}': overrides {key}, a setting of the whole run (set it "
                "at the top level of the config, or run the experiment as a run of its own)"
            )
    used = used_keys(config)
    method, last = method_of(config), config.get("last_step")
    what = f"method {method}" + (f" up to last_step {last}" if last else "")
    for key in leaf_keys({k: v for k, v in overrides.items() if k in CHECKED_SECTIONS}):
        if key.split(".")[0] == "demo" and lookup(config, "dataset.kind") != "demo":
            problems.append(
                f"experiment '{name}': overrides {key}, but its dataset.kind is "
                f"{lookup(config, 'dataset.kind')} (demo settings only make the demo dataset)"
            )
        elif not any(key == u or key.startswith(f"{u}.") or u.startswith(f"{key}.") for u in used):
            problems.append(
                f"experiment '{name}': overrides {key}, which {what} does not use "
                "(remove it, or override the method or steps that read it)"
            )
    if problems:
        raise ValueError("\n".join(problems))


def _own_demo_root(name: str, merged: dict, base: dict, demos: dict) -> None:
    """Give experiment ``name`` (settings ``merged``, changed in place) a demo dataset of
    its own when its demo settings differ from the base config's: ``<root>-<name>``, or the
    directory of an earlier experiment with the same demo settings. ``demos`` maps each
    demo directory so far to who set it and its settings; a directory that would hold two
    different demo datasets, or that is the base config's non-demo dataset, is refused."""
    data, demo = merged["dataset"], merged.get("demo")
    if data.get("kind") != "demo":
        return
    base_root = lookup(base, "dataset.root")
    if data["root"] == base_root and demo != base.get("demo"):
        same = [root for root, (_, settings) in demos.items() if settings == demo]
        data["root"] = same[0] if same else f"{os.path.normpath(base_root)}-{name}"
    if data["root"] == base_root and lookup(base, "dataset.kind") != "demo":
        raise ValueError(
            f"experiment '{name}': dataset.kind demo would write the demo dataset into "
            f"dataset.root {base_root}, the base config's {lookup(base, 'dataset.kind')} "
            "dataset (give the experiment a dataset.root of its own)"
        )
    holder, settings = demos.setdefault(data["root"], (f"experiment '{name}'", demo))
    if settings != demo:
        raise ValueError(
            f"experiment '{name}': dataset.root {data['root']} is the demo dataset of "
            f"{holder}, made with other demo settings (give the experiment its own root)"
        )


def demo_datasets(experiments: dict[str, Experiment]) -> dict[str, dict]:
    """Every demo dataset the experiments read: its directory -> its demo settings."""
    return {
        exp.config["dataset"]["root"]: exp.config.get("demo") or {}
        for exp in experiments.values()
        if exp.config["dataset"]["kind"] == "demo"
    }


def expand(config: dict) -> dict[str, Experiment]:
    """Every experiment of ``config`` by directory (``<run>`` or ``<run>/<name>[-seedS]``)."""
    check_name("run", config["run"])
    base = {k: v for k, v in config.items() if k != "experiments"}
    listed = config.get("experiments") or []
    if not listed:
        return {config["run"]: Experiment(config["run"], config["run"], None, base)}
    found: dict[str, Experiment] = {}
    demos: dict[str, tuple[str, object]] = {}  # demo root -> (who set it, demo settings)
    if lookup(base, "dataset.kind") == "demo":
        demos[lookup(base, "dataset.root")] = ("the base config", base.get("demo"))
    for entry in listed:
        check_name("experiments[].name", entry.get("name"))
        overrides = entry.get("overrides") or {}
        merged = merge(base, overrides)
        check_overrides(entry["name"], overrides, merged)
        _own_demo_root(entry["name"], merged, base, demos)
        for seed in entry.get("seeds") or [None]:
            settings = merged
            suffix = ""
            if seed is not None:
                settings = merge(merged, {})
                for key in TRAININGS:
                    section = lookup(settings, key)
                    if isinstance(section, dict):
                        section["seed"] = seed
                suffix = f"-seed{seed}"
            path = f"{config['run']}/{entry['name']}{suffix}"
            if path in found:
                raise ValueError(f"experiments: '{entry['name']}{suffix}' is listed twice")
            found[path] = Experiment(path, entry["name"], seed, settings)
    return found


def signature(config: dict, artefact: str) -> str | None:
    """What an artefact's content depends on, itself and upstream: the artefacts it is made
    from in the config's method and their settings (a JSON string); None when the method
    makes no such artefact."""
    graph = ARTEFACTS[method_of(config)]
    if artefact not in graph:
        return None
    parts: dict[str, object] = {}
    made_from: set[str] = set()
    pending = [artefact]
    while pending:
        node = pending.pop()
        made_from.add(node)
        for key in graph[node].keys:
            parts[key] = lookup(config, key)
        pending.extend(graph[node].sources)
    return json.dumps({"from": sorted(made_from), "settings": parts}, sort_keys=True, default=str)


def owner(experiments: dict[str, Experiment], path: str, artefact: str) -> str:
    """The experiment whose directory holds ``artefact`` for experiment ``path``: the first
    listed that makes it the same way with the same settings (so it is computed once)."""
    wanted = signature(experiments[path].config, artefact)
    if wanted is None:
        method = method_of(experiments[path].config)
        raise ValueError(f"experiment '{path}': method {method} makes no artefact '{artefact}'")
    for other in experiments.values():
        if signature(other.config, artefact) == wanted:
            return other.path
    raise AssertionError("unreachable: an experiment agrees with itself")


def plan(experiments: dict[str, Experiment], results: str) -> dict:
    """What :func:`wsss.reporting.compare.compare` reads: the steps of every experiment (in pipeline
    order; experiments of several methods side by side), per experiment its metrics files,
    the artefacts it reuses from another experiment, and the benchmark files of every rule
    that made its artefacts (wherever they were made)."""
    scored = {s.key for exp in experiments.values() for s in steps_of(exp.config)}
    out: dict = {
        "steps": [
            {"key": s.key, "title": s.title} for s in all_steps().values() if s.key in scored
        ],
        "experiments": [],
    }
    short = {path: path.split("/", 1)[-1] for path in experiments}
    for path, exp in experiments.items():
        metrics, shared, benchmarks, reused = {}, {}, {}, {}
        for step in steps_of(exp.config):
            holder = owner(experiments, path, step.artefact)
            metrics[step.key] = f"{results}/{holder}/metrics/{step.key}.json"
            if holder != path:
                shared[step.key] = short[holder]
        graph = ARTEFACTS[method_of(exp.config)]
        for name in sorted(artefacts_of(exp.config), key=list(graph).index):
            artefact = graph[name]
            holder = owner(experiments, path, name)
            count = experiments[holder].config["num_shards"]
            suffixes = [f"-{k}" for k in range(count)] if artefact.sharded else [""]
            for rule in artefact.rules:
                copies = suffixes
                if rule in REPEATED:
                    count = REPEATED[rule](experiments[holder].config)
                    copies = [f"-{k}" for k in range(count)]
                    if not copies:
                        continue
                if holder != path:
                    reused[rule] = short[holder]
                benchmarks[rule] = [
                    f"{results}/{holder}/benchmarks/{rule}{suffix}.tsv" for suffix in copies
                ]
        out["experiments"].append(
            {
                "name": short[path],
                "group": exp.name,
                "seed": exp.seed,
                "metrics": metrics,
                "shared": shared,
                "reused": reused,
                "benchmarks": benchmarks,
            }
        )
    return out
