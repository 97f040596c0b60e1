# The segmentation network: trained on the pseudo-masks ("seg") and, as the upper bound,
# on the ground-truth masks of the same images ("seg_full"); segmentation of the val
# split per shard; scores.


wildcard_constraints:
    model="seg|seg_full",


rule train_seg:
    input:
        manifest=manifest,
        labels=seg_labels,
    output:
        model=out("{model}/model.pt"),
    params:
        flags=section("seg", "train"),
        supervision=lambda wc: "full" if wc.model == "seg_full" else "weak",
        split=setting("dataset", "train_split"),
        held_out=setting("dataset", "val_split"),
        device=setting("device"),
        state=lambda wc, output: os.path.join(os.path.dirname(output.model), "train-state"),
    threads: config["threads"]["train"]
    resources:
        gpu=gpu_request,
        **config["resources"]["train"],
    log:
        log("train_{model}"),
    benchmark:
        bench("train_{model}")
    conda:
        "../../envs/wsss.yaml"
    shell:
        "wsss train-seg --manifest {input.manifest:q} --labels {input.labels:q}"
        " --out {output.model:q} --state-dir {params.state:q} --supervision {params.supervision}"
        " --split {params.split:q} --held-out {params.held_out:q} --device {params.device:q}"
        " {params.flags} > {log:q} 2>&1"


rule infer_seg:
    input:
        manifest=manifest,
        model=lambda wc: at(wc.exp, f"{wc.model}_model"),
    output:
        labels=directory(out("pred/{model}/shard-{shard}")),
    params:
        flags=section("seg", "infer"),
        split=setting("dataset", "val_split"),
        device=setting("device"),
        num_shards=setting("num_shards"),
    threads: config["threads"]["shard"]
    resources:
        gpu=gpu_request,
        **config["resources"]["shard"],
    log:
        log("infer_{model}-{shard}"),
    benchmark:
        bench("infer_{model}-{shard}")
    conda:
        "../../envs/wsss.yaml"
    shell:
        "wsss infer-seg --manifest {input.manifest:q} --model {input.model:q}"
        " --out {output.labels:q}"
        " --shard {wildcards.shard} --num-shards {params.num_shards} --split {params.split:q}"
        " --device {params.device:q} {params.flags} > {log:q} 2>&1"


rule eval_seg:
    input:
        manifest=manifest,
        labels=lambda wc: shards(wc.exp, f"{wc.model}_pred"),
    output:
        metrics=out("metrics/{model}.json"),
    params:
        split=setting("dataset", "val_split"),
    log:
        log("eval_{model}"),
    benchmark:
        bench("eval_{model}")
    conda:
        "../../envs/wsss.yaml"
    shell:
        "wsss eval-labels --manifest {input.manifest:q} --labels {input.labels:q}"
        " --out {output.metrics:q} --stage {wildcards.model}"
        " --split {params.split:q} > {log:q} 2>&1"
