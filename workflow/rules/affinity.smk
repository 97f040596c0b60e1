# AffinityNet and the random walk: affinity labels per shard, AffinityNet training,
# the random walk per shard, pseudo-masks per shard, and their evaluations.
# Shard K of every per-image stage holds the same images as CAM shard K.


rule affinity_labels:
    input:
        manifest=manifest,
        cams=lambda wc: at(wc.exp, "cam", shard=wc.shard),
    output:
        labels=directory(out_of("aff_labels")),
    params:
        flags=section("affinity", "labels"),
        split=setting("dataset", "train_split"),
        num_shards=setting("num_shards"),
    threads: 1
    resources:
        **config["resources"]["shard"],
    log:
        log("affinity_labels-{shard}"),
    benchmark:
        bench("affinity_labels-{shard}")
    conda:
        "../../envs/wsss.yaml"
    shell:
        "wsss affinity-labels --manifest {input.manifest:q} --maps {input.cams:q}"
        " --out {output.labels:q} --shard {wildcards.shard} --num-shards {params.num_shards}"
        " --split {params.split:q} {params.flags} > {log:q} 2>&1"


rule eval_aff_labels:
    input:
        manifest=manifest,
        labels=lambda wc: shards(wc.exp, "aff_labels"),
    output:
        metrics=out_of("aff_eval"),
    params:
        split=setting("dataset", "eval_split"),
        stage="aff_labels",
    log:
        log("eval_aff_labels"),
    benchmark:
        bench("eval_aff_labels")
    conda:
        "../../envs/wsss.yaml"
    shell:
        "wsss eval-labels --manifest {input.manifest:q} --labels {input.labels:q}"
        " --out {output.metrics:q} --stage {params.stage} --split {params.split:q} > {log:q} 2>&1"


rule train_aff:
    input:
        manifest=manifest,
        labels=lambda wc: shards(wc.exp, "aff_labels"),
    output:
        model=out_of("aff_model"),
    params:
        flags=section("affinity", "train"),
        split=setting("dataset", "train_split"),
        held_out=setting("dataset", "val_split"),
        device=setting("device"),
        state=lambda wc, output: os.path.join(os.path.dirname(output.model), "train-state"),
    threads: config["threads"]["train"]
    resources:
        gpu=gpu_request,
        **config["resources"]["train"],
    log:
        log("train_aff"),
    benchmark:
        bench("train_aff")
    conda:
        "../../envs/wsss.yaml"
    shell:
        "wsss train-aff --manifest {input.manifest:q} --labels {input.labels:q}"
        " --out {output.model:q} --state-dir {params.state:q} --split {params.split:q}"
        " --held-out {params.held_out:q}"
        " --device {params.device:q} {params.flags} > {log:q} 2>&1"


rule random_walk:
    input:
        manifest=manifest,
        cams=lambda wc: at(wc.exp, "cam", shard=wc.shard),
        model=lambda wc: at(wc.exp, "aff_model"),
    output:
        maps=out_of("rw"),
    params:
        flags=section("affinity", "random_walk"),
        split=setting("dataset", "train_split"),
        device=setting("device"),
        num_shards=setting("num_shards"),
    threads: config["threads"]["shard"]
    resources:
        gpu=gpu_request,
        **config["resources"]["shard"],
    log:
        log("random_walk-{shard}"),
    benchmark:
        bench("random_walk-{shard}")
    conda:
        "../../envs/wsss.yaml"
    shell:
        "wsss random-walk --manifest {input.manifest:q} --maps {input.cams:q}"
        " --model {input.model:q}"
        " --out {output.maps:q} --shard {wildcards.shard} --num-shards {params.num_shards}"
        " --split {params.split:q} --device {params.device:q} {params.flags} > {log:q} 2>&1"


# The random walk's maps are scored like the CAMs, at the alphas it walked.
use rule eval_cam as eval_rw with:
    input:
        manifest=manifest,
        maps=lambda wc: shards(wc.exp, "rw"),
    output:
        metrics=out_of("rw_eval"),
    params:
        flags="",
        split=setting("dataset", "eval_split"),
        stage="rw",
    log:
        log("eval_rw"),
    benchmark:
        bench("eval_rw")


rule pseudo_masks:
    input:
        manifest=manifest,
        maps=lambda wc: at(wc.exp, "rw", shard=wc.shard),
    output:
        masks=directory(out_of("pseudo")),
    params:
        flags=section("pseudo"),
        split=setting("dataset", "train_split"),
        num_shards=setting("num_shards"),
    threads: 1
    resources:
        **config["resources"]["shard"],
    log:
        log("pseudo_masks-{shard}"),
    benchmark:
        bench("pseudo_masks-{shard}")
    conda:
        "../../envs/wsss.yaml"
    shell:
        "wsss pseudo-masks --manifest {input.manifest:q} --maps {input.maps:q}"
        " --out {output.masks:q}"
        " --shard {wildcards.shard} --num-shards {params.num_shards} --split {params.split:q}"
        " {params.flags} > {log:q} 2>&1"


use rule eval_aff_labels as eval_pseudo with:
    input:
        manifest=manifest,
        labels=lambda wc: shards(wc.exp, "pseudo"),
    output:
        metrics=out_of("pseudo_eval"),
    params:
        split=setting("dataset", "eval_split"),
        stage="pseudo",
    log:
        log("eval_pseudo"),
    benchmark:
        bench("eval_pseudo")
