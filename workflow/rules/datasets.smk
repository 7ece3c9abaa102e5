# Images with known affine transformations: results/datasets/{dataset}.nc


rule dataset:
    output:
        "results/datasets/{dataset}.nc",
    log:
        "logs/dataset/{dataset}.log",
    benchmark:
        "logs/dataset/{dataset}.tsv"
    conda:
        "../../environment.yml"
    params:
        code=code("dataset.py"),
        section=dataset_params,
    script:
        "../scripts/dataset.py"
