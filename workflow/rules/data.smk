# The dataset: the generated demo set (when chosen) and the checked manifest that every
# later stage reads instead of the dataset itself.


if DATASET["kind"] == "demo":

    rule make_demo:
        output:
            directory(DATASET["root"]),
        params:
            flags=flags(config["demo"]),
        log:
            log("make_demo"),
        benchmark:
            bench("make_demo")
        shell:
            "wsss make-demo --out {output} {params.flags} > {log} 2>&1"


rule prepare_dataset:
    input:
        DATASET["root"] if DATASET["kind"] == "demo" else [],
    output:
        f"{RUN}/dataset.json",
    params:
        kind=DATASET["kind"],
        root=DATASET["root"],
        splits=" ".join(
            dict.fromkeys(
                [DATASET["train_split"], DATASET["eval_split"], DATASET["val_split"]]
            )
        ),
        options=json.dumps(DATASET["options"]),
        check=("--check-pixels" if DATASET["check_pixels"] else "--no-check-pixels"),
    log:
        log("prepare_dataset"),
    benchmark:
        bench("prepare_dataset")
    shell:
        "wsss prepare --kind {params.kind} --root {params.root} --out {output}"
        " --splits {params.splits} --options '{params.options}' {params.check} > {log} 2>&1"
