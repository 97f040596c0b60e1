# Weakly-supervised semantic segmentation from image-level labels.
#   snakemake --cores all                       # the demo run (config.yaml)
#   snakemake --cores all --configfile configs/msrc21.yaml
# Rules only wire files to `wsss <stage>` commands; the code lives in src/wsss.

import json
import os

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config.yaml")


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/cam.smk"
include: "workflow/rules/affinity.smk"


rule all:
    input:
        metrics("cam"),
        metrics("aff_labels"),
        metrics("rw"),
        metrics("pseudo"),
    default_target: True
