# Weakly-supervised semantic segmentation from image-level labels.
#   snakemake --cores all                       # the demo run (config.yaml)
#   snakemake --cores all --configfile configs/msrc21.yaml
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
include: "workflow/rules/report.smk"


rule all:
    """Every stage, its score, and the report figures."""
    input:
        [metrics(stage) for stage in ("cam", "aff_labels", "rw", "pseudo", "seg")],
        metrics("seg_full") if config["seg"]["full_bound"] else [],
        rules.report_figures.output,
        rules.report_examples.output,
    default_target: True
