"""The cost of ``config/paper.yaml``, from its own jobs run at paper size on fewer samples.

Every job of the full reproduction runs, at the paper's canvas (128 px), transforms (55),
networks, layers and options, on a config that differs from ``config/paper.yaml`` only
in counts that a job's work is linear in:

- each dataset's ``samples`` (64 in the paper; ``--samples``, default 1). The dataset,
  features and align jobs work one chunk at a time (one sample is the align job's chunk
  of a paper-sized layer, and more than a features or dataset chunk), so their peak
  memory is the paper job's, and their computation grows with the samples;
- ``recognition.samples`` (500 further images per dataset; ``--recognition``, default 50);
- ``stn.seeds`` (5; ``--seeds``, default 1): every seed trains the same network on the
  same digits for the same epochs, so one seed's jobs stand for each of the others.

The run is ``snakemake --cores 2`` in a scratch copy of the repository
(:func:`bench_workflow.scratch_copy`; ``results/`` and ``logs/`` start empty). Each job's
wall seconds and peak RSS come from the ``benchmark:`` TSV Snakemake writes beside its log.

**Projection to the paper's counts**, per job, stated as it is computed:

- ``features`` and ``align`` files record ``compute_seconds`` (their work, without the
  process's start-up): start-up + computation × (paper samples / run samples);
- ``dataset`` jobs record none and scale as a whole: an upper bound, as most of a
  one-sample dataset job is start-up (a 64-sample photographs job measured 22–26 s in
  ``bench_paper_chain.py``, against 4–6 s × 64 projected; 3 jobs, immaterial to the total);
- ``recognize`` scales as a whole by (paper samples + paper recognition images) / (run
  samples + run recognition images) (the dataset's own samples cost about 1.5 times a
  further image, README "Recognition", so this understates it by a few per cent);
- ``stn_train``: each measured job counts (paper seeds / run seeds) times;
- the other jobs (training, tables, figures) are counted as measured: they read results,
  so at the paper's sample count they take somewhat longer (an underestimate, of jobs
  that take seconds).

**Reported**: per rule, the jobs of ``config/paper.yaml`` (checked against its dry run),
the measured and projected seconds per job, the largest peak RSS, and the Slurm
profile's grant (``workflow/profiles/slurm/config.yaml``); the total as job-hours and as
the time of a 2-core machine that keeps both cores busy (core-seconds / 2).

**Goals**: the whole ``config/paper.yaml`` within 3 hours of 2-core compute; every job's
peak RSS within 2 GiB and within its grant; every job's projected wall time within its
grant. Writes ``results/benchmarks/paper_cost.json``. Not part of ``make bench`` (about
30 minutes on an idle 2-core machine: 1602 s at b5d128b)::

    .venv/bin/python benchmarks/paper_cost.py                 # samples 1, recognition 50, 1 seed
    .venv/bin/python benchmarks/paper_cost.py --samples 2 --keep
    .venv/bin/python benchmarks/paper_cost.py --no-dense      # as-built maps only

``--no-dense`` runs the same with ``features.dense: false``: what the dense maps cost is
the difference of the two totals.

``--report DIR`` runs nothing: it projects and summarises the jobs of a scratch copy kept
by ``--keep`` as they now stand, so that what one setting costs at paper size can be
measured by rerunning only the rule it touches there, e.g. the align jobs with the dense
warp's other optimiser (``align.yaml`` holding ``alignment: {dense_method: adam}``)::

    cd DIR && PYTHONPATH=src snakemake --cores 2 --forcerun align \
        --configfile config/paper_cost.yaml align.yaml -- $(find results/alignment -name '*.nc')
    .venv/bin/python benchmarks/paper_cost.py --report DIR
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_paper_chain import RSS_GOAL_MB, granted
from bench_workflow import CORES, dry_run, job_stats, remove_copy, scratch_copy, snakemake
from common import ROOT, Goal, write_json

NAME = "paper_cost"
PAPER = "config/paper.yaml"
#: The config the scratch copy runs (written there, never into the repository).
COST_CONFIG = "config/paper_cost.yaml"
#: The issue's bound on the whole of config/paper.yaml: hours of 2-core compute.
HOURS_GOAL = 3.0
#: Rules whose result file records ``compute_seconds`` (the work without start-up).
COMPUTE_RULES = ("features", "align")


def cost_config(
    paper: dict[str, Any], samples: int, recognition: int, seeds: int, dense: bool = True
) -> dict:
    """``config/paper.yaml`` with fewer samples, recognition images and STN seeds.

    ``dense=False`` also sets ``features.dense: false`` (the as-built maps only): what
    the paper would cost without the dense maps, the trade the 3-hour goal is about.
    """
    cfg = yaml.safe_load(yaml.safe_dump(paper))  # a deep copy
    if not dense:
        cfg.setdefault("features", {})["dense"] = False
    for ds in cfg["datasets"].values():
        ds["samples"] = samples
    if "recognition" in cfg:
        cfg["recognition"]["samples"] = recognition
    if "stn" in cfg:
        cfg["stn"]["seeds"] = list(cfg["stn"]["seeds"])[:seeds]
    return cfg


def _scale(paper: dict[str, Any], samples: int, recognition: int, seeds: int) -> dict:
    """Per rule, the factor from the run's counts to the paper's (see the module doc)."""
    ds = list(paper["datasets"].values())
    paper_samples = {int(d["samples"]) for d in ds}
    if len(paper_samples) != 1:  # one factor for every dataset keeps the model plain
        raise SystemExit(f"{PAPER}: datasets with different samples {sorted(paper_samples)}")
    n = paper_samples.pop()
    rec = paper.get("recognition", {}).get("samples", 0)
    if not isinstance(rec, int):
        raise SystemExit(f"{PAPER}: recognition.samples must be one number here, not {rec!r}")
    return {
        "samples": n / samples,
        "recognize": (n + rec) / (samples + recognition),
        "stn_seeds": len(paper.get("stn", {}).get("seeds", [])) / seeds if seeds else 0,
    }


def _jobs(work: Path, output: str) -> list[dict[str, Any]]:
    """Every job of the run: rule, first output, threads, and its benchmark TSV's s / max_rss."""
    jobs, block = [], None
    for line in output.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):\s*$", line):
            block = {"rule": m[1], "threads": 1}
            jobs.append(block)
        elif block is not None and (m := re.match(r"^\s+(output|benchmark|threads): (.+)$", line)):
            key, value = m[1], m[2].split(",")[0].strip()
            block[key] = int(value) if key == "threads" else value
    out = []
    for job in jobs:
        tsv = job.get("benchmark")
        if tsv is None or not (work / tsv).exists():
            continue
        with open(work / tsv, newline="") as fh:
            row = next(csv.DictReader(fh, delimiter="\t"))
        job["s"] = float(row["s"])
        job["max_rss_mb"] = _number(row.get("max_rss"))
        out.append(job)
    return out


def _number(text: str | None) -> float | None:
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # "NA" when a job was too short to sample
        return None


def _compute_seconds(path: Path) -> float | None:
    import netCDF4

    if path.suffix != ".nc" or not path.exists():
        return None
    with netCDF4.Dataset(path) as nc:
        return float(nc.getncattr("compute_seconds")) if "compute_seconds" in nc.ncattrs() else None


def project(work: Path, jobs: list[dict[str, Any]], scale: dict[str, float]) -> None:
    """Add each job's projected paper-size seconds (``paper_s``) and weight (``count``)."""
    for job in jobs:
        rule, s = job["rule"], job["s"]
        job["count"] = scale["stn_seeds"] if rule == "stn_train" else 1.0
        if rule in COMPUTE_RULES:
            compute = _compute_seconds(work / job["output"])
            if compute is None:
                raise RuntimeError(f"{job['output']}: no compute_seconds attribute")
            job["compute_s"] = compute
            job["paper_s"] = max(0.0, s - compute) + compute * scale["samples"]
        elif rule == "dataset":
            job["paper_s"] = s * scale["samples"]
        elif rule == "recognize":
            job["paper_s"] = s * scale["recognize"]
        else:
            job["paper_s"] = s


def summarise(jobs: list[dict[str, Any]], grants: dict[str, dict[str, float]]) -> dict:
    """Per rule: paper jobs, measured / projected seconds, peak, grant; and the totals."""
    rules: dict[str, Any] = {}
    for rule in sorted({j["rule"] for j in jobs}):
        js = [j for j in jobs if j["rule"] == rule]
        rss = [j["max_rss_mb"] for j in js if j["max_rss_mb"] is not None]
        g = grants.get(rule, grants["*"])
        worst = max(js, key=lambda j: j["paper_s"])
        rules[rule] = {
            "paper_jobs": sum(j["count"] for j in js),
            "measured_median_s": statistics.median(j["s"] for j in js),
            "paper_median_s": statistics.median(j["paper_s"] for j in js),
            "paper_max_s": worst["paper_s"],
            "paper_max_job": worst["output"],
            "paper_job_seconds": sum(j["paper_s"] * j["count"] for j in js),
            "paper_core_seconds": sum(j["paper_s"] * j["count"] * j["threads"] for j in js),
            "max_rss_mb": max(rss, default=None),
            "granted_mem_mb": g["mem_mb"],
            "granted_runtime_min": g["runtime"],
        }
    job_s = sum(r["paper_job_seconds"] for r in rules.values())
    core_s = sum(r["paper_core_seconds"] for r in rules.values())
    return {
        "rules": rules,
        "job_hours": job_s / 3600,
        "two_core_hours": core_s / CORES / 3600,
    }


def print_summary(result: dict[str, Any]) -> None:
    print(f"  {'rule':<26} {'jobs':>5} {'run s/job':>10} {'paper s/job':>12} {'max s':>8}"
          f" {'granted min':>12} {'peak MB':>8} {'granted MB':>11} {'paper h':>8}")
    rules = result["rules"]
    for rule, r in sorted(rules.items(), key=lambda kv: -kv[1]["paper_job_seconds"]):
        peak = "-" if r["max_rss_mb"] is None else f"{r['max_rss_mb']:.0f}"
        print(f"  {rule:<26} {r['paper_jobs']:>5.0f} {r['measured_median_s']:>10.1f}"
              f" {r['paper_median_s']:>12.1f} {r['paper_max_s']:>8.0f}"
              f" {r['granted_runtime_min']:>12.0f} {peak:>8} {r['granted_mem_mb']:>11.0f}"
              f" {r['paper_job_seconds'] / 3600:>8.2f}")
    what = PAPER if result.get("dense", True) else f"{PAPER} without dense maps"
    print(f"  {what}: {result['job_hours']:.1f} job-hours, {result['two_core_hours']:.1f} h"
          f" of a 2-core machine that keeps both cores busy")


def goals_of(result: dict[str, Any]) -> list[Goal]:
    hours = result["two_core_hours"]
    what = PAPER if result.get("dense", True) else f"{PAPER} without dense maps"
    goals = [Goal(f"{what} on 2 cores, from its jobs at paper size", f"{hours:.1f} h",
                  f"<= {HOURS_GOAL:g} h", hours <= HOURS_GOAL,
                  "dense maps: s^2 forward passes and s^2 more pixels per strided layer")]
    for rule, r in result["rules"].items():
        rss = r["max_rss_mb"]
        if rss is not None:
            goals += [
                Goal(f"paper {rule} job peak RSS", f"{rss:.0f} MB",
                     f"<= {RSS_GOAL_MB:.0f} MB (2 GiB)", rss <= RSS_GOAL_MB),
                Goal(f"paper {rule} job peak RSS / Slurm mem_mb",
                     f"{rss / r['granted_mem_mb']:.2f}",
                     f"<= 1 ({r['granted_mem_mb']:.0f} MB granted)",
                     rss <= r["granted_mem_mb"]),
            ]
        ratio = r["paper_max_s"] / (60 * r["granted_runtime_min"])
        goals.append(Goal(f"paper {rule} job wall / Slurm runtime (projected)", f"{ratio:.2f}",
                          f"<= 1 ({r['granted_runtime_min']:.0f} min granted)", ratio <= 1))
    return goals


def report(work: Path, cores: int = CORES) -> dict[str, Any]:
    """Project and summarise a kept scratch copy's jobs as they now stand (``--report``):
    the job list from a dry run of every job, the seconds and peaks from their TSVs."""
    cost_file = work / COST_CONFIG
    if not cost_file.exists():
        raise SystemExit(f"{work} holds no {COST_CONFIG}: pass a scratch copy that"
                         " `paper_cost.py --keep` kept")
    cost = yaml.safe_load(cost_file.read_text())
    samples = {int(d["samples"]) for d in cost["datasets"].values()}.pop()
    recognition = int(cost.get("recognition", {}).get("samples", 0))
    seeds = len(cost.get("stn", {}).get("seeds", []))
    dense = cost.get("features", {}).get("dense", True) is not False
    paper = yaml.safe_load((ROOT / PAPER).read_text())
    listing = snakemake(work, "--dry-run", "--forceall", "--cores", str(cores),
                        "--configfile", COST_CONFIG, timeout=600)
    jobs = _jobs(work, listing.output)
    project(work, jobs, _scale(paper, samples, recognition, seeds))
    result = summarise(jobs, granted())
    expected = job_stats(listing.output)["jobs"]
    measured = {r: len([j for j in jobs if j["rule"] == r]) for r in expected}
    if missing := {r: n - measured[r] for r, n in expected.items() if r != "all" and measured[r] != n}:
        raise SystemExit(f"{work}: jobs without a benchmark TSV, per rule: {missing}")
    result.update(samples=samples, recognition=recognition, seeds=seeds, dense=dense)
    print(f"[paper_cost] the jobs of {work} as they stand ({len(jobs)} jobs)")
    print_summary(result)
    return result


def main(samples: int = 1, recognition: int = 50, seeds: int = 1, cores: int = CORES,
         keep: bool = False, dense: bool = True) -> list[Goal]:
    paper = yaml.safe_load((ROOT / PAPER).read_text())
    scale = _scale(paper, samples, recognition, seeds)
    work = scratch_copy()
    try:
        (work / COST_CONFIG).write_text(
            f"# {PAPER} with fewer samples (benchmarks/paper_cost.py)\n"
            + yaml.safe_dump(cost_config(paper, samples, recognition, seeds, dense),
                             sort_keys=False))
        expected = dry_run(work, PAPER)
        print(f"[paper_cost] {PAPER}: {expected['total']} jobs; running every job at paper size"
              f" with {samples} sample(s), {recognition} recognition images, {seeds} STN seed(s)"
              f"{'' if dense else ', features.dense false (as-built maps only)'}"
              f" (snakemake --cores {cores}) in {work}", flush=True)
        run = snakemake(work, "--cores", str(cores), "--configfile", COST_CONFIG,
                        timeout=8 * 3600)
        jobs = _jobs(work, run.output)
        project(work, jobs, scale)
        stats = job_stats(run.output)
    finally:
        if keep:
            print(f"  kept the scratch copy {work}")
        else:
            remove_copy(work)
    result = summarise(jobs, granted())
    counted = {r: round(v["paper_jobs"]) for r, v in result["rules"].items()}
    missing = {r: n for r, n in expected["jobs"].items() if r != "all" and counted.get(r) != n}
    if missing:
        raise RuntimeError(f"projected job counts {counted} differ from {PAPER}'s dry run"
                           f" at {missing}")
    result.update(run_seconds=run.seconds, run_jobs=stats, scale=scale, samples=samples,
                  recognition=recognition, seeds=seeds, dense=dense, jobs=jobs)
    print(f"  the run: {run.seconds:.0f} s wall, {stats['total']} jobs")
    print_summary(result)
    goals = goals_of(result)
    write_json(NAME if dense else f"{NAME}_no_dense", result, goals, quick=False)
    return goals


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1, help="samples per dataset (paper: 64)")
    ap.add_argument("--recognition", type=int, default=50,
                    help="further recognition images per dataset (paper: 500)")
    ap.add_argument("--seeds", type=int, default=1, help="STN seeds (paper: 5)")
    ap.add_argument("--cores", type=int, default=CORES)
    ap.add_argument("--keep", action="store_true", help="keep the scratch copy")
    ap.add_argument("--no-dense", dest="dense", action="store_false",
                    help="features.dense false: the as-built maps only, what the paper costs"
                    " without the dense maps (writes paper_cost_no_dense.json)")
    ap.add_argument("--report", type=Path, metavar="DIR",
                    help="run nothing: summarise the jobs of a scratch copy kept by --keep")
    a = ap.parse_args()
    if a.report is not None:
        report(a.report, a.cores)
        sys.exit(0)
    for goal in main(a.samples, a.recognition, a.seeds, a.cores, a.keep, a.dense):
        print(goal.line())
