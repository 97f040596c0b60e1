# The dataset: the generated demo sets (one per distinct demo settings of the experiments)
# and the checked manifest that every later stage reads instead of the dataset itself.


for _root, _demo in DEMOS.items():

    rule:
        name:
            demo_rule_name(_root)
        output:
            root=directory(_root),
        params:
            flags=flags(_demo),
        log:
            f"{RESULTS}/{config['run']}/logs/{demo_rule_name(_root)}.log",
        benchmark:
            f"{RESULTS}/{config['run']}/benchmarks/{demo_rule_name(_root)}.tsv"
        conda:
            "../../envs/wsss.yaml"
        shell:
            "wsss make-demo --out {output.root:q} {params.flags} > {log:q} 2>&1"


rule prepare_dataset:
    input:
        dataset=dataset_inputs,
    output:
        manifest=out_of("dataset"),
    params:
        kind=setting("dataset", "kind"),
        root=setting("dataset", "root"),
        splits=dataset_splits,
        options=lambda wc: json.dumps(cfg(wc)["dataset"]["options"]),
        check=lambda wc: flags({"check_pixels": cfg(wc)["dataset"]["check_pixels"]}),
        # not passed on: a digest of the image and mask files, so that adding, removing or
        # replacing one reruns the manifest (and the split files, CSV or JSON are inputs)
        listing=dataset_listing_of,
    log:
        log("prepare_dataset"),
    benchmark:
        bench("prepare_dataset")
    conda:
        "../../envs/wsss.yaml"
    shell:
        "wsss prepare --kind {params.kind} --root {params.root:q} --out {output.manifest:q}"
        " --splits {params.splits:q} --options {params.options:q} {params.check} > {log:q} 2>&1"
