# Figures (PNG and PDF) for the report: results/figures/...
# One script per rule, workflow/scripts/figure_<name>.py, calls featalign.figures.<name>.
# A figure that shows an excess interval gets the claims config and the seed, so that
# its numbers are those of claims.csv.


rule figure_error_vs_magnitude:
    input:
        pair_alignment_files,
    output:
        png=report(
            "results/figures/{dataset}/{network}/error_vs_magnitude.png",
            caption="../report/error_vs_magnitude.rst",
            category="Error against magnitude",
            subcategory="{network}",
            labels={"dataset": "{dataset}", "network": "{network}"},
        ),
        pdf="results/figures/{dataset}/{network}/error_vs_magnitude.pdf",
    log:
        "logs/figures/{dataset}/{network}/error_vs_magnitude.log",
    benchmark:
        "logs/figures/{dataset}/{network}/error_vs_magnitude.tsv"
    conda:
        "../../environment.yml"
    params:
        code=code("figure_error_vs_magnitude.py"),
    script:
        "../scripts/figure_error_vs_magnitude.py"


rule figure_excess_vs_depth:
    input:
        "results/tables/errors.csv",
    output:
        png=report(
            "results/figures/{dataset}/excess_vs_depth.png",
            caption="../report/excess_vs_depth.rst",
            category="Excess against depth",
            labels={"dataset": "{dataset}"},
        ),
        pdf="results/figures/{dataset}/excess_vs_depth.pdf",
    log:
        "logs/figures/{dataset}/excess_vs_depth.log",
    benchmark:
        "logs/figures/{dataset}/excess_vs_depth.tsv"
    conda:
        "../../environment.yml"
    params:
        code=code("figure_excess_vs_depth.py"),
        claims=config["claims"],
        seed=config["seed"],
    script:
        "../scripts/figure_excess_vs_depth.py"


rule figure_verdict_grid:
    input:
        "results/tables/claims.csv",
    output:
        png=report(
            "results/figures/verdict_grid.png",
            caption="../report/verdict_grid.rst",
            category="Claims",
        ),
        pdf="results/figures/verdict_grid.pdf",
    log:
        "logs/figures/verdict_grid.log",
    benchmark:
        "logs/figures/verdict_grid.tsv"
    conda:
        "../../environment.yml"
    params:
        code=code("figure_verdict_grid.py"),
    script:
        "../scripts/figure_verdict_grid.py"


rule figure_separation:
    input:
        errors="results/tables/errors.csv",
        claims="results/tables/claims.csv",
    output:
        png=report(
            "results/figures/separation.png",
            caption="../report/separation.rst",
            category="Claims",
        ),
        pdf="results/figures/separation.pdf",
    log:
        "logs/figures/separation.log",
    benchmark:
        "logs/figures/separation.tsv"
    conda:
        "../../environment.yml"
    params:
        code=code("figure_separation.py"),
        claims=config["claims"],
        seed=config["seed"],
    script:
        "../scripts/figure_separation.py"


rule figure_affine_vs_oracle:
    input:
        "results/tables/errors.csv",
    output:
        png=report(
            "results/figures/affine_vs_oracle.png",
            caption="../report/affine_vs_oracle.rst",
            category="Optimiser",
        ),
        pdf="results/figures/affine_vs_oracle.pdf",
    log:
        "logs/figures/affine_vs_oracle.log",
    benchmark:
        "logs/figures/affine_vs_oracle.tsv"
    conda:
        "../../environment.yml"
    params:
        code=code("figure_affine_vs_oracle.py"),
    script:
        "../scripts/figure_affine_vs_oracle.py"


rule figure_example_panel:
    input:
        unpack(example_inputs),
    output:
        png=report(
            "results/figures/{dataset}/example_panel.png",
            caption="../report/example_panel.rst",
            category="Examples",
            labels={"dataset": "{dataset}"},
        ),
        pdf="results/figures/{dataset}/example_panel.pdf",
    log:
        "logs/figures/{dataset}/example_panel.log",
    benchmark:
        "logs/figures/{dataset}/example_panel.tsv"
    conda:
        "../../environment.yml"
    params:
        code=code("figure_example_panel.py"),
        layers=example_networks(),
    script:
        "../scripts/figure_example_panel.py"


rule figure_training_curve:
    input:
        "results/weights/{network}.pt",
    output:
        png=report(
            "results/figures/training/{network}.png",
            caption="../report/training_curve.rst",
            category="Training",
            labels={"network": "{network}"},
        ),
        pdf="results/figures/training/{network}.pdf",
    log:
        "logs/figures/training/{network}.log",
    benchmark:
        "logs/figures/training/{network}.tsv"
    conda:
        "../../environment.yml"
    params:
        code=code("figure_training_curve.py"),
    script:
        "../scripts/figure_training_curve.py"
