# Paths of a run and the translation of config sections into command-line flags.

import os
import sys

# Jobs call `wsss`: find it next to the Python that runs Snakemake (a conda env, when
# used, is activated inside the job and comes first).
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]

RUN = f"{config['results']}/{config['run']}"
SHARDS = list(range(config["num_shards"]))
DATASET = config["dataset"]


def flags(section: dict) -> str:
    """`--key value` for every entry of a config section (lists space-separated,
    booleans as --key / --no-key), the form every `wsss <stage>` command accepts."""
    out = []
    for key, value in section.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            out.append(flag + " " + " ".join(str(v) for v in value))
        else:
            out.append(f"{flag} {value}")
    return " ".join(out)


def metrics(stage: str) -> str:
    return f"{RUN}/metrics/{stage}.json"


def log(name: str) -> str:
    return f"{RUN}/logs/{name}.log"


def bench(name: str) -> str:
    return f"{RUN}/benchmarks/{name}.tsv"
