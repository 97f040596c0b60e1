"""What the Snakemake workflow reads: each method's scored steps and artefact graph
(:mod:`~wsss.workflow.pipeline`), experiments and the artefacts they share
(:mod:`~wsss.workflow.experiments`), the checks of settings that depend on each other
(:mod:`~wsss.workflow.config_check`), and the GPU slots of local jobs
(:mod:`~wsss.workflow.gpu_slots`)."""
