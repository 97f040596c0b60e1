# The segmentation network: trained on the pseudo-masks ("seg") and, as the upper bound,
# on the ground-truth masks of the same images ("seg_full"); segmentation of the val
# split per shard; scores.


wildcard_constraints:
    model="seg|seg_full",


def seg_labels(wildcards) -> list[str]:
    """The pseudo-mask directories (weak supervision); none for the bound."""
    if wildcards.model == "seg_full":
        return []
    return expand(f"{RUN}/pseudo/shard-{{shard}}", shard=SHARDS)


rule train_seg:
    input:
        manifest=rules.prepare_dataset.output[0],
        labels=seg_labels,
    output:
        f"{RUN}/{{model}}/model.pt",
    params:
        flags=flags(config["seg"]["train"]),
        supervision=lambda wc: "full" if wc.model == "seg_full" else "weak",
        split=DATASET["train_split"],
        device=config["device"],
        state=lambda wc: f"{RUN}/{wc.model}/train-state",
    threads: config["threads"]["train"]
    resources:
        gpu=1,
        **config["resources"]["train"],
    log:
        log("train_{model}"),
    benchmark:
        bench("train_{model}")
    shell:
        "wsss train-seg --manifest {input.manifest} --labels {input.labels} --out {output}"
        " --state-dir {params.state} --supervision {params.supervision} --split {params.split}"
        " --device {params.device} {params.flags} > {log} 2>&1"


rule infer_seg:
    input:
        manifest=rules.prepare_dataset.output[0],
        model=f"{RUN}/{{model}}/model.pt",
    output:
        directory(f"{RUN}/pred/{{model}}/shard-{{shard}}"),
    params:
        flags=flags(config["seg"]["infer"]),
        split=DATASET["val_split"],
        device=config["device"],
        num_shards=config["num_shards"],
    threads: config["threads"]["shard"]
    resources:
        gpu=1,
        **config["resources"]["shard"],
    log:
        log("infer_{model}-{shard}"),
    benchmark:
        bench("infer_{model}-{shard}")
    shell:
        "wsss infer-seg --manifest {input.manifest} --model {input.model} --out {output}"
        " --shard {wildcards.shard} --num-shards {params.num_shards} --split {params.split}"
        " --device {params.device} {params.flags} > {log} 2>&1"


rule eval_seg:
    input:
        manifest=rules.prepare_dataset.output[0],
        labels=expand(f"{RUN}/pred/{{{{model}}}}/shard-{{shard}}", shard=SHARDS),
    output:
        metrics("{model}"),
    params:
        split=DATASET["val_split"],
    log:
        log("eval_{model}"),
    benchmark:
        bench("eval_{model}")
    shell:
        "wsss eval-labels --manifest {input.manifest} --labels {input.labels} --out {output}"
        " --stage {wildcards.model} --split {params.split} > {log} 2>&1"
