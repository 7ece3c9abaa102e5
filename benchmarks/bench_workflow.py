"""Benchmark 5: the Snakemake workflow itself: cold runs, a no-change rerun, job counts.

Every run happens in a **scratch copy** of the repository (the files ``git ls-files -co
--exclude-standard`` lists: tracked and untracked-but-not-ignored, uncommitted edits
included), so ``results/``, ``logs/`` and ``.snakemake/`` start empty. Snakemake runs there
as a user runs it, ``python -m snakemake --cores 2 [--configfile ...]`` from the copy's
root with the repository's own interpreter (``sys.executable``), so the default profile
(``workflow/profiles/default``, which names ``config/config.yaml``) applies.
``PYTHONPATH`` puts the copy's ``src/`` first, so that the jobs run the copied code and
the copied ``plugins/`` (the editable install points at the repository's live ``src/``,
which may change during a run of minutes, and featalign's code digests would then rerun
jobs in the no-change rerun).

**Measured**

- *Cold run* (``config/test.yaml``; full mode also the default config): wall seconds of
  the whole ``snakemake`` command, and its **peak RSS**: ``ru_maxrss`` of snakemake and its
  descendants (``RUSAGE_CHILDREN`` in a small wrapper process, :data:`_RSS_WRAPPER`), i.e.
  the resident set of the largest single process of the run (snakemake itself or any job),
  not a sum over processes running at once.
  Per rule, from the Snakemake ``benchmark:`` TSV every job writes beside its log
  (``logs/**/*.tsv``, mapped to rules by the ``benchmark:`` lines of snakemake's
  output): jobs, the largest ``max_rss`` (MB, as Snakemake reports it), median and
  largest ``s``.
- *No-change rerun* in the same copy: wall seconds; its output must say "Nothing to be
  done" (otherwise the benchmark raises: the workflow reran jobs it should not have).
  The goal is a share of the cold run; as a reference floor, the wall time of
  ``snakemake --version`` (interpreter and snakemake import) and of a dry run (the same
  plus parsing the workflow and building the DAG) are measured in the same run.
- *Job counts*: the "Job stats" table of ``snakemake --dry-run`` for
  ``config/paper.yaml`` (nothing runs), ``config/test.yaml`` and, in full mode,
  ``config/config.yaml``.

**Modes**: full runs ``config/test.yaml`` and then the default config (about 5–10 min),
in two separate scratch copies; ``--quick`` runs ``config/test.yaml`` only, and the
default config's goal lines do not appear; ``--tiny`` (the tests) only does the dry runs
of ``config/paper.yaml`` and ``config/test.yaml``.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import ROOT, Goal, run_standalone, write_json

NAME = "workflow"
CORES = 2
#: Goals of the default config's cold run (the issue: 10 min and 2 GiB on 2 cores).
WALL_GOAL_S = 600.0
RSS_GOAL_GIB = 2.0
#: A no-change rerun may take at most this share of the cold run.
RERUN_GOAL = 0.01
#: config/paper.yaml should create jobs in the low thousands at most.
JOBS_GOAL = 5000

TEST = "config/test.yaml"
DEFAULT = "config/config.yaml"
PAPER = "config/paper.yaml"


@dataclass(frozen=True)
class Run:
    """One snakemake command: wall seconds, peak RSS of its largest process, output."""

    seconds: float
    max_rss_kib: int
    returncode: int
    output: str

    @property
    def max_rss_gib(self) -> float:
        return self.max_rss_kib / 2**20


def scratch_copy() -> Path:
    """A fresh temporary directory holding the repository's tracked and untracked files."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    dest = Path(tempfile.mkdtemp(prefix="featalign-workflow-bench-"))
    for name in filter(None, listed.decode().split("\0")):
        src = ROOT / name
        if not src.is_file():  # deleted in the work tree but still tracked
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / name)
    return dest


def remove_copy(work: Path) -> None:
    """Delete a scratch copy, unless ``FEATALIGN_BENCH_KEEP=1``: then say where it is kept
    (its ``results/`` and ``logs/``, e.g. to compare a run's tables with another's)."""
    if os.environ.get("FEATALIGN_BENCH_KEEP") == "1":
        print(f"  kept the scratch copy {work} (FEATALIGN_BENCH_KEEP=1)", flush=True)
        return
    shutil.rmtree(work, ignore_errors=True)


#: Runs its arguments as a child and writes the largest resident set of that child and
#: its descendants (``RUSAGE_CHILDREN``) to the file named first. The benchmark itself
#: holds gigabytes by the time it starts the workflow, and a child's ``ru_maxrss`` counts
#: the address space it was forked from until it execs: measured from the benchmark
#: process, every run "peaked" at the benchmark's own size (2.08 GiB in the full run of
#: 2026-12-01). This small interpreter is what snakemake is forked from instead.
_RSS_WRAPPER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.call(sys.argv[2:])\n"
    "with open(sys.argv[1], 'w') as f:\n"
    "    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.exit(rc)\n"
)


def snakemake(work: Path, *args: str, timeout: float = 1800.0) -> Run:
    """Run ``python -m snakemake *args`` in ``work``; wall time and the peak RSS of its
    largest process (measured by :data:`_RSS_WRAPPER`)."""
    env = {
        **os.environ,
        "PYTHONHASHSEED": "0",
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(work / "src"), os.environ.get("PYTHONPATH")])
        ),
    }
    log = work / ".benchmark-snakemake.log"  # outside results/, logs/ and .snakemake/
    rss_file = work / ".benchmark-snakemake.maxrss"
    with open(log, "w") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", _RSS_WRAPPER, str(rss_file), sys.executable, "-m",
             "snakemake", *args],
            cwd=work,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # so that a timeout can stop its jobs too
        )
        timer = threading.Timer(timeout, os.killpg, (proc.pid, signal.SIGKILL))
        timer.start()
        try:
            proc.wait()
        finally:
            timer.cancel()
        seconds = time.perf_counter() - t0
    output = log.read_text(errors="replace")
    log.unlink()
    # RUSAGE_CHILDREN's ru_maxrss: the largest resident set of any single process of the
    # run, snakemake or a job (KiB on Linux, bytes on macOS); absent if it was killed
    maxrss = int(rss_file.read_text()) if rss_file.exists() else 0
    rss_file.unlink(missing_ok=True)
    maxrss = maxrss // 1024 if sys.platform == "darwin" else maxrss
    if proc.returncode != 0:
        why = f"timed out ({timeout:.0f} s)" if seconds >= timeout else f"exit {proc.returncode}"
        raise RuntimeError(
            f"snakemake {' '.join(args)} failed ({why}) after {seconds:.0f} s"
            f" in {work}:\n{output[-4000:]}"
        )
    return Run(seconds, int(maxrss), proc.returncode, output)


def job_stats(output: str) -> dict[str, Any]:
    """The first "Job stats" table of snakemake's output: jobs per rule and their total."""
    if "Job stats:" not in output:
        raise RuntimeError(f"no 'Job stats' table in snakemake's output:\n{output[-3000:]}")
    block = output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    rows = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", block, re.M))
    total = int(rows.pop("total"))
    jobs = {rule: int(n) for rule, n in rows.items()}
    if sum(jobs.values()) != total:
        raise RuntimeError(f"job stats do not add up to their total {total}: {jobs}")
    return {"jobs": jobs, "total": total}


def dry_run(work: Path, config: str | None) -> dict[str, Any]:
    """Job counts of ``snakemake --dry-run`` (``config`` None: the default profile's)."""
    args = ["--dry-run", "--cores", str(CORES)]
    if config is not None:
        args += ["--configfile", config]
    run = snakemake(work, *args, timeout=600)
    return {**job_stats(run.output), "seconds": run.seconds}


def _number(text: str | None) -> float | None:
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # "NA" or "-" when a job was too short to sample
        return None


def rule_benchmarks(work: Path, output: str) -> dict[str, dict[str, Any]]:
    """Per rule, from the jobs' benchmark TSVs: jobs, largest max_rss (MB), median/max s."""
    owner: dict[str, str] = {}  # benchmark file -> rule, from snakemake's job blocks
    rule = None
    for line in output.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):\s*$", line):
            rule = m[1]
        elif (m := re.match(r"^\s+benchmark: (\S+)\s*$", line)) and rule is not None:
            owner[m[1]] = rule
    rows: dict[str, list[dict[str, str]]] = {}
    for tsv in sorted((work / "logs").rglob("*.tsv")):
        rel = tsv.relative_to(work).as_posix()
        name = owner.get(rel, tsv.relative_to(work / "logs").parts[0])
        with open(tsv, newline="") as fh:
            rows.setdefault(name, []).extend(csv.DictReader(fh, delimiter="\t"))
    out: dict[str, dict[str, Any]] = {}
    for name, rs in rows.items():
        secs = [s for s in (_number(r.get("s")) for r in rs) if s is not None]
        rss = [x for x in (_number(r.get("max_rss")) for r in rs) if x is not None]
        out[name] = {
            "jobs": len(rs),
            "max_rss_mb": max(rss, default=None),
            "median_s": statistics.median(secs) if secs else None,
            "max_s": max(secs, default=None),
            "sum_s": sum(secs),
        }
    return out


#: Result files whose ``compute_seconds`` attribute splits a rule's job time.
COMPUTE_FILES = {"align": "results/alignment/*/*/*.nc", "features": "results/features/*/*.nc"}


def compute_seconds(work: Path) -> dict[str, list[float]]:
    """Per rule, the ``compute_seconds`` of its result files: the work, without start-up."""
    import netCDF4

    out: dict[str, list[float]] = {}
    for rule, pattern in COMPUTE_FILES.items():
        for path in sorted(work.glob(pattern)):
            with netCDF4.Dataset(path) as nc:
                if "compute_seconds" in nc.ncattrs():
                    out.setdefault(rule, []).append(float(nc.getncattr("compute_seconds")))
    return out


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_rules(rules: dict[str, dict[str, Any]]) -> None:
    """The per-rule table of one run."""
    print(
        f"  {'rule':<26} {'jobs':>5} {'max_rss MB':>11} {'median s':>9} {'max s':>8} {'sum s':>8}"
    )
    for name, r in sorted(rules.items(), key=lambda kv: -kv[1]["sum_s"]):
        print(
            f"  {name:<26} {r['jobs']:>5} {_fmt(r['max_rss_mb'], '11.0f')}"
            f" {_fmt(r['median_s'], '9.2f')} {_fmt(r['max_s'], '8.2f')} {r['sum_s']:>8.1f}"
        )


def cold_and_rerun(work: Path, config: str | None, label: str) -> dict[str, Any]:
    """Cold run, then a no-change rerun, in ``work``; raises if the rerun does anything."""
    args = ["--cores", str(CORES)]
    if config is not None:
        args += ["--configfile", config]
    print(f"[workflow] cold run ({label})...", flush=True)
    cold = snakemake(work, *args, timeout=3600)
    rules = rule_benchmarks(work, cold.output)
    for rule, secs in compute_seconds(work).items():
        if rule in rules:
            rules[rule]["median_compute_s"] = statistics.median(secs)
    stats = job_stats(cold.output)
    job_seconds = sum(r["sum_s"] for r in rules.values())
    print(
        f"  {cold.seconds:.1f} s wall, peak RSS {cold.max_rss_gib:.2f} GiB (largest process),"
        f" {stats['total']} jobs, {job_seconds:.0f} s summed over the jobs' benchmark TSVs"
    )
    print_rules(rules)
    rerun = snakemake(work, *args, timeout=600)
    if "Nothing to be done" not in rerun.output:
        raise RuntimeError(
            f"the no-change rerun ({label}) did not say 'Nothing to be done':\n"
            f"{rerun.output[-4000:]}"
        )
    share = rerun.seconds / cold.seconds
    print(f"  no-change rerun: {rerun.seconds:.1f} s ({100 * share:.1f} % of the cold run)")
    return {
        "cold": {
            "seconds": cold.seconds,
            "peak_rss_kib": cold.max_rss_kib,
            "peak_rss_gib": cold.max_rss_gib,
            **stats,
            "jobs_with_benchmark": sum(r["jobs"] for r in rules.values()),
            "job_seconds_sum": job_seconds,
            "rules": rules,
        },
        "rerun": {
            "seconds": rerun.seconds,
            "peak_rss_kib": rerun.max_rss_kib,
            "nothing_to_be_done": True,
        },
        "rerun_share": share,
    }


def rerun_goal(run: dict[str, Any], label: str, floor: dict[str, float]) -> Goal:
    share = run["rerun_share"]
    note = ""
    if share > RERUN_GOAL:
        note = (
            f"the rerun's {run['rerun']['seconds']:.1f} s is snakemake's fixed cost, not work:"
            f" `snakemake --version` alone takes {floor['version_s']:.1f} s and a dry run of"
            f" {label} {floor['dry_run_s']:.1f} s (parse the workflow, build the DAG) in this run;"
            f" 1 % of a {run['cold']['seconds']:.0f} s cold run is"
            f" {RERUN_GOAL * run['cold']['seconds']:.1f} s"
        )
    return Goal(
        f"workflow no-change rerun / cold run ({label})",
        f"{100 * share:.1f} %",
        f"<= {100 * RERUN_GOAL:g} %",
        share <= RERUN_GOAL,
        note,
    )


def main(quick: bool = False, tiny: bool = False) -> list[Goal]:
    """Run benchmark 5, write ``results/benchmarks/workflow.json`` and return its goals."""
    mode = "tiny" if tiny else "quick" if quick else "full"
    print(f"[workflow] scratch copies of {ROOT}, snakemake --cores {CORES} ({mode})", flush=True)
    copies: list[Path] = []
    try:
        copies.append(scratch_copy())
        work = copies[0]
        files = sum(1 for p in work.rglob("*") if p.is_file())
        dry = {PAPER: dry_run(work, PAPER), TEST: dry_run(work, TEST)}
        for cfg, d in dry.items():
            print(f"  dry run {cfg}: {d['total']} jobs ({d['seconds']:.1f} s)")
        payload: dict[str, Any] = {
            "cores": CORES,
            "mode": mode,
            "scratch_files": files,
            "dry_runs": dry,
        }
        runs: dict[str, Any] = {}
        goals: list[Goal] = []
        if not tiny:
            version = snakemake(work, "--version", timeout=120)
            payload["snakemake_version"] = version.output.strip().splitlines()[-1]
            payload["snakemake_version_seconds"] = version.seconds
            print(f"  snakemake --version: {version.seconds:.1f} s", flush=True)
            runs[TEST] = cold_and_rerun(work, TEST, "test config")
            floor = {"version_s": version.seconds, "dry_run_s": dry[TEST]["seconds"]}
            goals.append(rerun_goal(runs[TEST], "test config", floor))
            if not quick:
                copies.append(scratch_copy())
                other = copies[1]
                dry[DEFAULT] = dry_run(other, None)
                print(f"  dry run {DEFAULT}: {dry[DEFAULT]['total']} jobs", flush=True)
                run = runs[DEFAULT] = cold_and_rerun(other, None, "default config")
                wall, rss = run["cold"]["seconds"], run["cold"]["peak_rss_gib"]
                goals += [
                    Goal(
                        "workflow wall time (default config)",
                        f"{wall:.0f} s",
                        f"<= {WALL_GOAL_S:g} s",
                        wall <= WALL_GOAL_S,
                    ),
                    Goal(
                        "workflow peak RSS (default config)",
                        f"{rss:.2f} GiB",
                        f"<= {RSS_GOAL_GIB:g} GiB",
                        rss <= RSS_GOAL_GIB,
                    ),
                    rerun_goal(
                        run,
                        "default config",
                        {"version_s": version.seconds, "dry_run_s": dry[DEFAULT]["seconds"]},
                    ),
                ]
        payload["runs"] = runs
        paper = dry[PAPER]["total"]
        goals.append(
            Goal(f"workflow jobs of {PAPER}", str(paper), f"<= {JOBS_GOAL}", paper <= JOBS_GOAL)
        )
    finally:
        for c in copies:
            remove_copy(c)
    write_json(NAME, payload, goals, quick or tiny)
    return goals


if __name__ == "__main__":
    run_standalone(main, __doc__)
