# AffinityNet and the random walk: affinity labels per shard, AffinityNet training,
# the random walk per shard, pseudo-masks per shard, and their evaluations.
# Shard K of every per-image stage holds the same images as CAM shard K.


rule affinity_labels:
    input:
        manifest=manifest,
        cams=lambda wc: at(wc.exp, "cam", f"cam/shard-{wc.shard}.h5"),
    output:
        labels=directory(out("aff_labels/shard-{shard}")),
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
        labels=lambda wc: shards(wc.exp, "aff_labels", "aff_labels/shard-{}"),
    output:
        metrics=out("metrics/aff_labels.json"),
    params:
        split=setting("dataset", "eval_split"),
    log:
        log("eval_aff_labels"),
    benchmark:
        bench("eval_aff_labels")
    conda:
        "../../envs/wsss.yaml"
    shell:
        "wsss eval-labels --manifest {input.manifest:q} --labels {input.labels:q}"
        " --out {output.metrics:q} --stage aff_labels --split {params.split:q} > {log:q} 2>&1"


rule train_aff:
    input:
        manifest=manifest,
        labels=lambda wc: shards(wc.exp, "aff_labels", "aff_labels/shard-{}"),
    output:
        model=out("aff/model.pt"),
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
        cams=lambda wc: at(wc.exp, "cam", f"cam/shard-{wc.shard}.h5"),
        model=lambda wc: at(wc.exp, "aff_model", "aff/model.pt"),
    output:
        maps=out("rw/shard-{shard}.h5"),
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


rule eval_rw:
    input:
        manifest=manifest,
        maps=lambda wc: shards(wc.exp, "rw", "rw/shard-{}.h5"),
    output:
        metrics=out("metrics/rw.json"),
    params:
        split=setting("dataset", "eval_split"),
    log:
        log("eval_rw"),
    benchmark:
        bench("eval_rw")
    conda:
        "../../envs/wsss.yaml"
    shell:
        "wsss eval-maps --manifest {input.manifest:q} --maps {input.maps:q}"
        " --out {output.metrics:q}"
        " --stage rw --split {params.split:q} > {log:q} 2>&1"


rule pseudo_masks:
    input:
        manifest=manifest,
        maps=lambda wc: at(wc.exp, "rw", f"rw/shard-{wc.shard}.h5"),
    output:
        masks=directory(out("pseudo/shard-{shard}")),
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


rule eval_pseudo:
    input:
        manifest=manifest,
        labels=lambda wc: shards(wc.exp, "pseudo", "pseudo/shard-{}"),
    output:
        metrics=out("metrics/pseudo.json"),
    params:
        split=setting("dataset", "eval_split"),
    log:
        log("eval_pseudo"),
    benchmark:
        bench("eval_pseudo")
    conda:
        "../../envs/wsss.yaml"
    shell:
        "wsss eval-labels --manifest {input.manifest:q} --labels {input.labels:q}"
        " --out {output.metrics:q} --stage pseudo --split {params.split:q} > {log:q} 2>&1"
