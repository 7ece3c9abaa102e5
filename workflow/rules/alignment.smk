# The best warp of each layer's feature maps, and every measure of the design:
# results/alignment/{dataset}/{network}/{layer}.nc (one job per layer).


rule align:
    input:
        features=rules.features.output[0],
    output:
        "results/alignment/{dataset}/{network}/{layer}.nc",
    log:
        "logs/align/{dataset}/{network}/{layer}.log",
    benchmark:
        "logs/align/{dataset}/{network}/{layer}.tsv"
    priority: chain_priority
    conda:
        "../../environment.yml"
    threads: 1
    params:
        code=code("align.py"),
        section=alignment_params,
        device=config["device"],
    script:
        "../scripts/align.py"
