# AffinityNet and the random walk: affinity labels per shard, AffinityNet training,
# the random walk per shard, pseudo-masks per shard, and their evaluations.
# Shard K of every per-image stage holds the same images as CAM shard K.


rule affinity_labels:
    input:
        manifest=rules.prepare_dataset.output[0],
        cams=f"{RUN}/cam/shard-{{shard}}.h5",
    output:
        directory(f"{RUN}/aff_labels/shard-{{shard}}"),
    params:
        flags=flags(config["affinity"]["labels"]),
        split=DATASET["train_split"],
        num_shards=config["num_shards"],
    threads: 1
    resources:
        **config["resources"]["shard"],
    log:
        log("affinity_labels-{shard}"),
    benchmark:
        bench("affinity_labels-{shard}")
    shell:
        "wsss affinity-labels --manifest {input.manifest} --cams {input.cams} --out {output}"
        " --shard {wildcards.shard} --num-shards {params.num_shards} --split {params.split}"
        " {params.flags} > {log} 2>&1"


rule eval_aff_labels:
    input:
        manifest=rules.prepare_dataset.output[0],
        labels=expand(f"{RUN}/aff_labels/shard-{{shard}}", shard=SHARDS),
    output:
        metrics("aff_labels"),
    params:
        split=DATASET["eval_split"],
    log:
        log("eval_aff_labels"),
    benchmark:
        bench("eval_aff_labels")
    shell:
        "wsss eval-labels --manifest {input.manifest} --labels {input.labels} --out {output}"
        " --stage aff_labels --split {params.split} > {log} 2>&1"


rule train_aff:
    input:
        manifest=rules.prepare_dataset.output[0],
        labels=expand(f"{RUN}/aff_labels/shard-{{shard}}", shard=SHARDS),
    output:
        f"{RUN}/aff/model.pt",
    params:
        flags=flags(config["affinity"]["train"]),
        split=DATASET["train_split"],
        device=config["device"],
        state=f"{RUN}/aff/train-state",
    threads: config["threads"]["train"]
    resources:
        gpu=1,
        **config["resources"]["train"],
    log:
        log("train_aff"),
    benchmark:
        bench("train_aff")
    shell:
        "wsss train-aff --manifest {input.manifest} --labels {input.labels} --out {output}"
        " --state-dir {params.state} --split {params.split} --device {params.device}"
        " {params.flags} > {log} 2>&1"


rule random_walk:
    input:
        manifest=rules.prepare_dataset.output[0],
        cams=f"{RUN}/cam/shard-{{shard}}.h5",
        model=rules.train_aff.output[0],
    output:
        f"{RUN}/rw/shard-{{shard}}.h5",
    params:
        flags=flags(config["affinity"]["random_walk"]),
        split=DATASET["train_split"],
        device=config["device"],
        num_shards=config["num_shards"],
    threads: config["threads"]["shard"]
    resources:
        gpu=1,
        **config["resources"]["shard"],
    log:
        log("random_walk-{shard}"),
    benchmark:
        bench("random_walk-{shard}")
    shell:
        "wsss random-walk --manifest {input.manifest} --cams {input.cams} --model {input.model}"
        " --out {output} --shard {wildcards.shard} --num-shards {params.num_shards}"
        " --split {params.split} --device {params.device} {params.flags} > {log} 2>&1"


rule eval_rw:
    input:
        manifest=rules.prepare_dataset.output[0],
        maps=expand(f"{RUN}/rw/shard-{{shard}}.h5", shard=SHARDS),
    output:
        metrics("rw"),
    params:
        split=DATASET["eval_split"],
    log:
        log("eval_rw"),
    benchmark:
        bench("eval_rw")
    shell:
        "wsss eval-maps --manifest {input.manifest} --maps {input.maps} --out {output}"
        " --stage rw --split {params.split} > {log} 2>&1"


rule pseudo_masks:
    input:
        manifest=rules.prepare_dataset.output[0],
        maps=f"{RUN}/rw/shard-{{shard}}.h5",
    output:
        directory(f"{RUN}/pseudo/shard-{{shard}}"),
    params:
        flags=flags(config["pseudo"]),
        split=DATASET["train_split"],
        num_shards=config["num_shards"],
    threads: 1
    resources:
        **config["resources"]["shard"],
    log:
        log("pseudo_masks-{shard}"),
    benchmark:
        bench("pseudo_masks-{shard}")
    shell:
        "wsss pseudo-masks --manifest {input.manifest} --maps {input.maps} --out {output}"
        " --shard {wildcards.shard} --num-shards {params.num_shards} --split {params.split}"
        " {params.flags} > {log} 2>&1"


rule eval_pseudo:
    input:
        manifest=rules.prepare_dataset.output[0],
        labels=expand(f"{RUN}/pseudo/shard-{{shard}}", shard=SHARDS),
    output:
        metrics("pseudo"),
    params:
        split=DATASET["eval_split"],
    log:
        log("eval_pseudo"),
    benchmark:
        bench("eval_pseudo")
    shell:
        "wsss eval-labels --manifest {input.manifest} --labels {input.labels} --out {output}"
        " --stage pseudo --split {params.split} > {log} 2>&1"
