# The STN study (README "STN study"): spatial transformers trained at the input (C0), on
# feature maps (Ck) and with shared localisation (SLk), on rotated and scaled digits.
# results/stn/{stn_dataset}/{variant}/seed{seed}.nc|.pt, results/tables/stn*.csv,
# results/figures/stn/*. Only a config with an stn section asks for these files.


rule stn_train:
    output:
        result="results/stn/{stn_dataset}/{variant}/seed{seed}.nc",
        weights="results/stn/{stn_dataset}/{variant}/seed{seed}.pt",
    log:
        "logs/stn_train/{stn_dataset}/{variant}/seed{seed}.log",
    benchmark:
        "logs/stn_train/{stn_dataset}/{variant}/seed{seed}.tsv"
    wildcard_constraints:
        stn_dataset="[A-Za-z][A-Za-z0-9_]*",
        variant="none|C[0-9]+|SL[0-9]+",
        seed="[0-9]+",
    conda:
        "../../environment.yml"
    threads: 1
    params:
        code=code("stn_train.py"),
        stn=stn_train_params,
        device=config["device"],
    script:
        "../scripts/stn_train.py"


rule stn_summary:
    input:
        stn_result_files(),
    output:
        runs="results/tables/stn_runs.csv",
        table=report(
            "results/tables/stn.csv",
            caption="../report/stn_table.rst",
            category="STN study",
        ),
        claims=report(
            "results/tables/stn_claims.csv",
            caption="../report/stn_claims.rst",
            category="STN study",
        ),
        summary="results/tables/stn_summary.md",
        accuracy_png=report(
            "results/figures/stn/accuracy.png",
            caption="../report/stn_accuracy.rst",
            category="STN study",
        ),
        accuracy_pdf="results/figures/stn/accuracy.pdf",
        predicted_png=report(
            "results/figures/stn/predicted_vs_applied.png",
            caption="../report/stn_predicted.rst",
            category="STN study",
        ),
        predicted_pdf="results/figures/stn/predicted_vs_applied.pdf",
        curves_png=report(
            "results/figures/stn/training_curves.png",
            caption="../report/stn_curves.rst",
            category="STN study",
        ),
        curves_pdf="results/figures/stn/training_curves.pdf",
    log:
        "logs/stn_summary.log",
    benchmark:
        "logs/stn_summary.tsv"
    conda:
        "../../environment.yml"
    params:
        code=code("stn_summary.py"),
        stn=stn_summary_params(),
    script:
        "../scripts/stn_summary.py"
