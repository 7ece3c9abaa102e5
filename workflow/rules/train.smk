# Weights of networks that learn (a plugin's train= recipe), cached like any result:
# results/weights/{network}.pt


rule train:
    input:
        plugin=plugin_file,
    output:
        "results/weights/{network}.pt",
    log:
        "logs/train/{network}.log",
    benchmark:
        "logs/train/{network}.tsv"
    # first: a trained network's features, alignments and recognition wait on it, and
    # left to the end it serialises the run's last minutes
    priority: 10
    conda:
        "../../environment.yml"
    threads: 2
    params:
        code=network_code("train.py"),
        options=network_params,
        plugin_dirs=PLUGIN_DIRS,
    script:
        "../scripts/train.py"
