# WS-FCN (method wsfcn): the single-stage network trained end to end on the image labels;
# its masks of the training split (each image's labelled classes and the background only,
# scored like pseudo-masks) and of the val split (scored like the segmentation network),
# per shard, by the segmentation network's inference command.


wildcard_constraints:
    part="train|val",


rule train_wsfcn:
    input:
        manifest=manifest,
    output:
        model=out_of("wsfcn_model"),
    params:
        flags=section("wsfcn", "train"),
        split=setting("dataset", "train_split"),
        held_out=setting("dataset", "val_split"),
        device=setting("device"),
        state=lambda wc, output: os.path.join(os.path.dirname(output.model), "train-state"),
    threads: config["threads"]["train"]
    resources:
        gpu=gpu_request,
        **config["resources"]["train"],
    log:
        log("train_wsfcn"),
    benchmark:
        bench("train_wsfcn")
    conda:
        "../../envs/wsss.yaml"
    shell:
        "wsss train-wsfcn --manifest {input.manifest:q} --out {output.model:q}"
        " --state-dir {params.state:q} --split {params.split:q} --held-out {params.held_out:q}"
        " --device {params.device:q} {params.flags} > {log:q} 2>&1"


rule infer_wsfcn:
    input:
        manifest=manifest,
        model=lambda wc: at(wc.exp, "wsfcn_model"),
    output:
        labels=directory(out("wsfcn/masks-{part}/shard-{shard}")),
    params:
        flags=section("wsfcn", "infer"),
        split=wsfcn_split,
        present=lambda wc: flags({"present_only": wc.part == "train"}),
        device=setting("device"),
        num_shards=setting("num_shards"),
    threads: config["threads"]["shard"]
    resources:
        gpu=gpu_request,
        **config["resources"]["shard"],
    log:
        log("infer_wsfcn_{part}-{shard}"),
    benchmark:
        bench("infer_wsfcn_{part}-{shard}")
    conda:
        "../../envs/wsss.yaml"
    shell:
        "wsss infer-wsfcn --manifest {input.manifest:q} --model {input.model:q}"
        " --out {output.labels:q}"
        " --shard {wildcards.shard} --num-shards {params.num_shards} --split {params.split:q}"
        " {params.present} --device {params.device:q} {params.flags} > {log:q} 2>&1"


rule eval_wsfcn:
    input:
        manifest=manifest,
        labels=lambda wc: shards(wc.exp, f"wsfcn_{wc.part}"),
    output:
        metrics=out("metrics/wsfcn_{part}.json"),
    params:
        split=wsfcn_eval_split,
    log:
        log("eval_wsfcn_{part}"),
    benchmark:
        bench("eval_wsfcn_{part}")
    conda:
        "../../envs/wsss.yaml"
    shell:
        "wsss eval-labels --manifest {input.manifest:q} --labels {input.labels:q}"
        " --out {output.metrics:q} --stage wsfcn_{wildcards.part} --split {params.split:q}"
        " > {log:q} 2>&1"
