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
        "wsss report-figures --metrics {input.metrics} --histories {params.histories}"
        " --table {output.table} --plot {output.plot} --curves {output.curves} > {log} 2>&1"


rule report_examples:
    input:
        manifest=manifest,
        cams=lambda wc: shards(wc.exp, "cam", "cam/shard-{}.h5"),
        aff=lambda wc: shards(wc.exp, "aff_labels", "aff_labels/shard-{}"),
        pseudo=lambda wc: shards(wc.exp, "pseudo", "pseudo/shard-{}"),
        model=lambda wc: at(wc.exp, "seg_model", "seg/model.pt"),
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
        labels=lambda wc, input: " ".join(
            [f"'affinity labels={d}'" for d in input.aff]
            + [f"'pseudo-mask={d}'" for d in input.pseudo]
        ),
    log:
        log("report_examples"),
    benchmark:
        bench("report_examples")
    conda:
        "../../envs/wsss.yaml"
    shell:
        "wsss figure --manifest {input.manifest} --split {params.split} --out {output.panel}"
        " --maps {input.cams} --labels {params.labels} --model {input.model} --count 6"
        " --gallery {output.gallery}"
        " > {log} 2>&1"
