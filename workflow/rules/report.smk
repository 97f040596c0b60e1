# Figures for `snakemake --report report.html`: the stage table, per-class IoU, examples.


rule report_figures:
    input:
        metrics=[
            metrics(stage)
            for stage in ["cam", "aff_labels", "rw", "pseudo", "seg"]
            + (["seg_full"] if config["seg"]["full_bound"] else [])
        ],
    output:
        table=report(
            f"{RUN}/report/stages.html",
            caption="../report/stages.rst",
            category="1. Scores",
        ),
        plot=report(
            f"{RUN}/report/per_class.png",
            caption="../report/per_class.rst",
            category="1. Scores",
        ),
    params:
        metrics=f"{RUN}/metrics",
    log:
        log("report_figures"),
    benchmark:
        bench("report_figures")
    shell:
        "wsss report-figures --metrics {params.metrics} --table {output.table}"
        " --plot {output.plot} > {log} 2>&1"


rule report_examples:
    input:
        manifest=rules.prepare_dataset.output[0],
        cams=expand(f"{RUN}/cam/shard-{{shard}}.h5", shard=SHARDS),
        aff=expand(f"{RUN}/aff_labels/shard-{{shard}}", shard=SHARDS),
        pseudo=expand(f"{RUN}/pseudo/shard-{{shard}}", shard=SHARDS),
        model=f"{RUN}/seg/model.pt",
    output:
        report(
            f"{RUN}/report/examples.png",
            caption="../report/examples.rst",
            category="2. Examples",
        ),
    params:
        split=DATASET["eval_split"],
        labels=lambda wc, input: " ".join(
            [f"'affinity labels={d}'" for d in input.aff]
            + [f"'pseudo-mask={d}'" for d in input.pseudo]
        ),
    log:
        log("report_examples"),
    benchmark:
        bench("report_examples")
    shell:
        "wsss figure --manifest {input.manifest} --split {params.split} --out {output}"
        " --cams {input.cams} --labels {params.labels} --model {input.model} --count 6"
        " > {log} 2>&1"
