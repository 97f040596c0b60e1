# The comparison of a config's experiments (only with `experiments:`): the plan (which
# metrics and benchmark files belong to which experiment; wsss.workflow.experiments.plan) and the
# comparison table and plot.


rule experiment_plan:
    output:
        plan=f"{COMPARISON}/plan.json",
    params:
        plan=experiments.plan(EXPERIMENTS, RESULTS),
    log:
        f"{RESULTS}/{config['run']}/logs/experiment_plan.log",
    conda:
        "../../envs/wsss.yaml"
    run:
        from wsss.core.atomic import write_json

        write_json(output.plan, params.plan)


rule compare:
    input:
        plan=rules.experiment_plan.output.plan,
        metrics=[m for path in EXPERIMENTS for m in metrics_of(path)],
    output:
        table=report(
            f"{COMPARISON}/comparison.html",
            caption="../report/comparison.rst",
            category="0. Experiments",
            labels={"figure": "comparison table"},
        ),
        plot=report(
            f"{COMPARISON}/comparison.png",
            caption="../report/comparison.rst",
            category="0. Experiments",
            labels={"figure": "comparison plot"},
        ),
        markdown=f"{COMPARISON}/comparison.md",
    params:
        out=lambda wc, output: os.path.dirname(output.table),
    log:
        f"{RESULTS}/{config['run']}/logs/compare.log",
    benchmark:
        f"{RESULTS}/{config['run']}/benchmarks/compare.tsv"
    conda:
        "../../envs/wsss.yaml"
    shell:
        "wsss compare --plan {input.plan:q} --out {params.out:q} > {log:q} 2>&1"
