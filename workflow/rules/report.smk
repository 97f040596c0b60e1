# Figures for `snakemake --report report.html`: per experiment the stage table, per-class
# IoU and examples; with `experiments:`, their comparison.


rule report_figures:
    input:
        metrics=lambda wc: metrics_of(wc.exp),
        models=lambda wc: models_of(wc.exp),
    output:
        table=report(
            out("report/stages.html"),
            caption="../report/stages.rst",
            category="1. Scores",
            subcategory="{exp}",
            labels={"experiment": "{exp}", "figure": "stage table"},
        ),
        plot=report(
            out("report/per_class.png"),
            caption="../report/per_class.rst",
            category="1. Scores",
            subcategory="{exp}",
            labels={"experiment": "{exp}", "figure": "per-class IoU"},
        ),
        curves=report(
            directory(out("report/training")),
            patterns=["{network}.png"],
            caption="../report/training.rst",
            category="3. Training",
            subcategory="{network}",
            labels={"experiment": "{exp}", "network": "{network}"},
        ),
    params:
        histories=lambda wc, input: [
            os.path.join(os.path.dirname(m), "training.csv") for m in input.models
        ],
    log:
        log("report_figures"),
    benchmark:
        bench("report_figures")
    conda:
        "../../envs/wsss.yaml"
    shell:
        "wsss report-figures --metrics {input.metrics:q} --histories {params.histories:q}"
        " --table {output.table:q} --plot {output.plot:q} --curves {output.curves:q} > {log:q} 2>&1"


rule report_examples:
    input:
        unpack(examples_input),
    output:
        panel=report(
            out("report/examples.png"),
            caption="../report/examples.rst",
            category="2. Examples",
            subcategory="{exp}",
            labels={"experiment": "{exp}", "figure": "examples"},
        ),
        gallery=report(
            directory(out("report/gallery")),
            patterns=["{column}/{image}.png"],
            caption="../report/gallery.rst",
            category="2. Examples",
            subcategory="{column}",
            labels={"experiment": "{exp}", "column": "{column}", "image": "{image}"},
        ),
    params:
        split=setting("dataset", "eval_split"),
        columns=examples_flags,
    log:
        log("report_examples"),
    benchmark:
        bench("report_examples")
    conda:
        "../../envs/wsss.yaml"
    shell:
        "wsss figure --manifest {input.manifest:q} --split {params.split:q} --out {output.panel:q}"
        " {params.columns} --model {input.model:q} --count 6"
        " --gallery {output.gallery:q}"
        " > {log:q} 2>&1"


rule confusion:
    """Where each class's pixels go, for every scored step: a picture per step and a table
    of the labels that take each class's pixels."""
    input:
        metrics=lambda wc: metrics_of(wc.exp),
    output:
        pictures=report(
            directory(out("report/confusion")),
            patterns=["{step}.png"],
            category="1. Scores",
            subcategory="{exp}",
            labels={"experiment": "{exp}", "figure": "confusion: {step}"},
        ),
    localrule: True
    log:
        log("confusion"),
    benchmark:
        bench("confusion")
    conda:
        "../../envs/wsss.yaml"
    shell:
        "wsss confusion --metrics {input.metrics:q} --out {output.pictures:q} > {log:q} 2>&1"


EXPERIMENT_TARGETS.append(rules.confusion.output)
