# Weakly-supervised semantic segmentation from image-level labels.
#   snakemake --cores all                       # the demo run (config.yaml)
#   snakemake --cores all --configfile configs/msrc21.yaml
#   snakemake --cores all --configfile configs/ablation_demo.yaml   # several experiments
#   snakemake --cores all --config method=wsfcn  # WS-FCN, the single-stage method
#   snakemake --report report.html              # the HTML report of a finished run
# Rules only wire files to `wsss <stage>` commands; the code lives in src/wsss.

import json
import os

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config.yaml")


report: "workflow/report/workflow.rst"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/cam.smk"
include: "workflow/rules/affinity.smk"
include: "workflow/rules/segmentation.smk"
include: "workflow/rules/wsfcn.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/experiments.smk"


# One run at a time writes into results/<run>/, whatever its working directory: the lock is
# taken when the jobs start (not for dry runs) and released at the end (workflow/rules/
# common.smk, lock_results).
onstart:
    lock_results()


onsuccess:
    unlock_results()


onerror:
    unlock_results()


# Cheap jobs run where Snakemake runs, not as cluster jobs.
localrules:
    eval_cam,
    eval_aff_labels,
    eval_rw,
    eval_pseudo,
    eval_seg,
    eval_wsfcn,
    report_figures,
    report_examples,
    experiment_plan,
    compare,


rule all:
    """Every experiment's scored steps and report figures; with `experiments:`, their
    comparison."""
    input:
        [metrics_of(path) for path in EXPERIMENTS],
        expand(rules.report_figures.output, exp=EXPERIMENTS),
        [expand(target, exp=EXPERIMENTS) for target in EXPERIMENT_TARGETS],
        [
            expand(rules.report_examples.output, exp=path)
            for path in EXPERIMENTS
            if has_examples(path)
        ],
        rules.compare.output if COMPARE else [],
    default_target: True
