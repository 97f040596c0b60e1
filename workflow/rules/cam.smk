# The CAM stage: train the classifier, infer CAMs per shard, score them.


rule train_cam:
    input:
        manifest=rules.prepare_dataset.output[0],
    output:
        f"{RUN}/cam/model.pt",
    params:
        flags=flags(config["cam"]["train"]),
        split=DATASET["train_split"],
        device=config["device"],
        state=f"{RUN}/cam/train-state",
    threads: config["threads"]["train"]
    resources:
        gpu=1,
        **config["resources"]["train"],
    log:
        log("train_cam"),
    benchmark:
        bench("train_cam")
    shell:
        "wsss train-cam --manifest {input.manifest} --out {output} --state-dir {params.state}"
        " --split {params.split} --device {params.device} {params.flags} > {log} 2>&1"


rule infer_cam:
    input:
        manifest=rules.prepare_dataset.output[0],
        model=rules.train_cam.output[0],
    output:
        f"{RUN}/cam/shard-{{shard}}.h5",
    params:
        flags=flags(config["cam"]["infer"]),
        split=DATASET["train_split"],
        device=config["device"],
        num_shards=config["num_shards"],
    threads: config["threads"]["shard"]
    resources:
        gpu=1,
        **config["resources"]["shard"],
    log:
        log("infer_cam-{shard}"),
    benchmark:
        bench("infer_cam-{shard}")
    shell:
        "wsss infer-cam --manifest {input.manifest} --model {input.model} --out {output}"
        " --shard {wildcards.shard} --num-shards {params.num_shards} --split {params.split}"
        " --device {params.device} {params.flags} > {log} 2>&1"


rule eval_cam:
    input:
        manifest=rules.prepare_dataset.output[0],
        maps=expand(f"{RUN}/cam/shard-{{shard}}.h5", shard=SHARDS),
    output:
        metrics("cam"),
    params:
        flags=flags(config["cam"]["eval"]),
        split=DATASET["eval_split"],
    log:
        log("eval_cam"),
    benchmark:
        bench("eval_cam")
    shell:
        "wsss eval-maps --manifest {input.manifest} --maps {input.maps} --out {output}"
        " --stage cam --split {params.split} {params.flags} > {log} 2>&1"
