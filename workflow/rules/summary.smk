# Tidy tables and verdicts: results/tables/errors.csv, claims.csv, separation.csv


rule summarize:
    input:
        alignment=alignment_files(),
        recognition=recognition_files(),
    output:
        errors="results/tables/errors.csv",
        claims=report(
            "results/tables/claims.csv",
            caption="../report/claims.rst",
            category="Claims",
        ),
        separation=report(
            "results/tables/separation.csv",
            caption="../report/separation_table.rst",
            category="Claims",
        ),
        summary="results/tables/claims_summary.md",
        recognition="results/tables/recognition.csv",
    log:
        "logs/summarize.log",
    benchmark:
        "logs/summarize.tsv"
    conda:
        "../../environment.yml"
    params:
        code=code("summarize.py"),
        invariances=invariances(),
        claims=config["claims"],
        recognition=config["recognition"],
        seed=config["seed"],
    script:
        "../scripts/summarize.py"
