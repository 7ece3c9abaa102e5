# What the classifier decides after each alignment of layer k's feature maps:
# results/recognition/{dataset}/{network}.nc (one job per classifier and dataset).


rule recognize:
    input:
        unpack(recognition_inputs),
    output:
        "results/recognition/{dataset}/{network}.nc",
    log:
        "logs/recognize/{dataset}/{network}.log",
    benchmark:
        "logs/recognize/{dataset}/{network}.tsv"
    # as soon as its alignments exist: the summary waits on it
    priority: 5
    conda:
        "../../environment.yml"
    # one thread: with two it waited in the default run until no one-thread job was
    # left to start (562 of 652 s), although its inputs were ready at 137 s
    threads: 1
    params:
        code=network_code("recognize.py"),
        options=network_params,
        plugin_dirs=PLUGIN_DIRS,
        device=config["device"],
        section=recognition_params,
    script:
        "../scripts/recognize.py"


rule figure_recognition:
    input:
        rules.recognize.output[0],
    output:
        png=report(
            "results/figures/{dataset}/{network}/recognition.png",
            caption="../report/recognition.rst",
            category="Recognition",
            subcategory="{network}",
            labels={"dataset": "{dataset}", "network": "{network}"},
        ),
        pdf="results/figures/{dataset}/{network}/recognition.pdf",
    log:
        "logs/figures/{dataset}/{network}/recognition.log",
    benchmark:
        "logs/figures/{dataset}/{network}/recognition.tsv"
    conda:
        "../../environment.yml"
    params:
        code=code("figure_recognition.py"),
        claims=config["claims"],
        seed=config["seed"],
    script:
        "../scripts/figure_recognition.py"
