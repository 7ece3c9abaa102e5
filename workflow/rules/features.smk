# Feature maps per dataset and network, one netCDF group per layer:
# results/features/{dataset}/{network}.nc


rule features:
    input:
        unpack(features_inputs),
    output:
        "results/features/{dataset}/{network}.nc",
    log:
        "logs/features/{dataset}/{network}.log",
    benchmark:
        "logs/features/{dataset}/{network}.tsv"
    priority: chain_priority
    conda:
        "../../environment.yml"
    # one thread: on a small machine a two-thread job holds every core while the
    # alignments wait (the Slurm profile gives it two: set-threads)
    threads: 1
    params:
        code=network_code("features.py"),
        options=network_params,
        plugin_dirs=PLUGIN_DIRS,
        device=config["device"],
        batch_size=config["features"]["batch_size"],
        max_pad=config["features"]["max_pad"],
        dense=config["features"]["dense"],
        timeout=config["features"]["timeout"],
    script:
        "../scripts/features.py"
