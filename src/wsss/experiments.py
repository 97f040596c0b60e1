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
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass

from wsss.pipeline import (
    ARTEFACTS,
    REPEATED,
    all_steps,
    artefacts_of,
    lookup,
    method_of,
    steps_of,
)

TRAININGS = ("cam.train", "affinity.train", "seg.train", "wsfcn.train")


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


def expand(config: dict) -> dict[str, Experiment]:
    """Every experiment of ``config`` by directory (``<run>`` or ``<run>/<name>[-seedS]``)."""
    base = {k: v for k, v in config.items() if k != "experiments"}
    listed = config.get("experiments") or []
    if not listed:
        return {config["run"]: Experiment(config["run"], config["run"], None, base)}
    found: dict[str, Experiment] = {}
    for entry in listed:
        merged = merge(base, entry.get("overrides") or {})
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
    """What :func:`wsss.compare.compare` reads: the steps of every experiment (in pipeline
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
