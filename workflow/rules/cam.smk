# The CAM stage: train the classifier (in stages, for progressive patch learning), infer
# CAMs per shard, score them.


rule train_cam_stage:
    input:
        manifest=manifest,
        init=lambda wc: cam_init(wc, int(wc.stage)),
    output:
        model=out("cam/stage-{stage}/model.pt"),
    params:
        flags=lambda wc: cam_train_flags(wc, int(wc.stage)),
        init=lambda wc, input: f"--init {shlex.quote(input.init[0])}" if input.init else "",
        split=setting("dataset", "train_split"),
        held_out=setting("dataset", "val_split"),
        device=setting("device"),
        state=lambda wc, output: os.path.join(os.path.dirname(output.model), "train-state"),
    threads: config["threads"]["train"]
    resources:
        gpu=gpu_request,
        **config["resources"]["train"],
    log:
        log("train_cam_stage-{stage}"),
    benchmark:
        bench("train_cam_stage-{stage}")
    conda:
        "../../envs/wsss.yaml"
    shell:
        "wsss train-cam --manifest {input.manifest:q} --out {output.model:q}"
        " --state-dir {params.state:q} --split {params.split:q} --held-out {params.held_out:q}"
        " --device {params.device:q} {params.init}"
        " {params.flags} > {log:q} 2>&1"


# The last (or only) CAM training: the same job as a progressive stage's, written where
# the CAM inference reads it.
use rule train_cam_stage as train_cam with:
    input:
        manifest=manifest,
        init=cam_init,
    output:
        model=out_of("cam_model"),
    params:
        flags=cam_train_flags,
        init=lambda wc, input: f"--init {shlex.quote(input.init[0])}" if input.init else "",
        split=setting("dataset", "train_split"),
        held_out=setting("dataset", "val_split"),
        device=setting("device"),
        state=lambda wc, output: os.path.join(os.path.dirname(output.model), "train-state"),
    log:
        log("train_cam"),
    benchmark:
        bench("train_cam")


rule infer_cam:
    input:
        manifest=manifest,
        model=lambda wc: at(wc.exp, "cam_model"),
    output:
        maps=out_of("cam"),
    params:
        flags=section("cam", "infer"),
        split=setting("dataset", "train_split"),
        device=setting("device"),
        num_shards=setting("num_shards"),
    threads: config["threads"]["shard"]
    resources:
        gpu=gpu_request,
        **config["resources"]["shard"],
    log:
        log("infer_cam-{shard}"),
    benchmark:
        bench("infer_cam-{shard}")
    conda:
        "../../envs/wsss.yaml"
    shell:
        "wsss infer-cam --manifest {input.manifest:q} --model {input.model:q} --out {output.maps:q}"
        " --shard {wildcards.shard} --num-shards {params.num_shards} --split {params.split:q}"
        " --device {params.device:q} {params.flags} > {log:q} 2>&1"


rule eval_cam:
    input:
        manifest=manifest,
        maps=lambda wc: shards(wc.exp, "cam"),
    output:
        metrics=out_of("cam_eval"),
    params:
        flags=section("cam", "eval"),
        split=setting("dataset", "eval_split"),
        stage="cam",
    log:
        log("eval_cam"),
    benchmark:
        bench("eval_cam")
    conda:
        "../../envs/wsss.yaml"
    shell:
        "wsss eval-maps --manifest {input.manifest:q} --maps {input.maps:q}"
        " --out {output.metrics:q}"
        " --stage {params.stage} --split {params.split:q} {params.flags} > {log:q} 2>&1"
