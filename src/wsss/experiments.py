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

from wsss.pipeline import ARTEFACTS, REPEATED, steps_of

TRAININGS = ("cam.train", "affinity.train", "seg.train")


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


def lookup(config: dict, dotted: str) -> object:
    """The value at a dotted key (``cam.train``), or None if absent."""
    value: object = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


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


def signature(config: dict, artefact: str) -> str:
    """The settings an artefact's content depends on, itself and upstream (a JSON string)."""
    parts: dict[str, object] = {}
    pending = [artefact]
    while pending:
        node = pending.pop()
        for key in ARTEFACTS[node].keys:
            parts[key] = lookup(config, key)
        pending.extend(ARTEFACTS[node].sources)
    return json.dumps(parts, sort_keys=True, default=str)


def owner(experiments: dict[str, Experiment], path: str, artefact: str) -> str:
    """The experiment whose directory holds ``artefact`` for experiment ``path``: the first
    listed whose settings agree up to it (so it is computed once)."""
    wanted = signature(experiments[path].config, artefact)
    for other in experiments.values():
        if signature(other.config, artefact) == wanted:
            return other.path
    raise AssertionError("unreachable: an experiment agrees with itself")


def plan(experiments: dict[str, Experiment], results: str) -> dict:
    """What :func:`wsss.compare.compare` reads: per experiment its metrics files, the
    artefacts it reuses from another experiment, and the benchmark files of every rule
    that made its artefacts (wherever they were made)."""
    first = next(iter(experiments.values()))
    out: dict = {
        "steps": [{"key": s.key, "title": s.title} for s in steps_of(first.config)],
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
        for name, artefact in ARTEFACTS.items():
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
