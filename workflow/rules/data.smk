# The dataset: the generated demo set (when chosen) and the checked manifest that every
# later stage reads instead of the dataset itself.


if config["dataset"]["kind"] == "demo":

    rule make_demo:
        output:
            root=directory(config["dataset"]["root"]),
        params:
            flags=flags(config["demo"]),
        log:
            f"{RESULTS}/{config['run']}/logs/make_demo.log",
        benchmark:
            f"{RESULTS}/{config['run']}/benchmarks/make_demo.tsv"
        conda:
            "../../envs/wsss.yaml"
        shell:
            "wsss make-demo --out {output.root} {params.flags} > {log} 2>&1"


rule prepare_dataset:
    input:
        root=dataset_root,
    output:
        manifest=out("dataset.json"),
    params:
        kind=setting("dataset", "kind"),
        root=setting("dataset", "root"),
        splits=dataset_splits,
        options=lambda wc: json.dumps(cfg(wc)["dataset"]["options"]),
        check=lambda wc: flags({"check_pixels": cfg(wc)["dataset"]["check_pixels"]}),
    log:
        log("prepare_dataset"),
    benchmark:
        bench("prepare_dataset")
    conda:
        "../../envs/wsss.yaml"
    shell:
        "wsss prepare --kind {params.kind} --root {params.root} --out {output.manifest}"
        " --splits {params.splits} --options '{params.options}' {params.check} > {log} 2>&1"
