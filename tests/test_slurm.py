"""The SLURM profile (workflow/profiles/slurm): a dry run, and a real run on a one-node Slurm.

The real run installs Debian's Slurm and munge when they are missing, starts
munged, slurmctld and slurmd for one node named after this machine (state, spool
and logs in a scratch folder, free ports), runs a small config through
``--profile workflow/profiles/slurm`` and again with ``--cores 2``, and checks
that both runs wrote the same results. It stops every daemon it started.

Without slurmdbd ``sacct`` does not work and the executor's default status query
would wait forever, hence ``--slurm-status-command squeue``: squeue sees a
finished job for MinJobAge seconds, which must be at least three times
``--slurm-init-seconds-before-status-checks`` (see ../shared/NOTES.md).

The config goes to /etc/slurm/slurm.conf, Slurm's default path, because the
plugin's job step drops SLURM_* variables (SLURM_CONF with them) before its
inner ``srun``. The test refuses to touch a slurm.conf it did not write, and
removes its own at the end.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from conftest import BIN, ROOT, snakemake

from featalign.io import RUN_ATTRS

pytestmark = pytest.mark.slow

PROFILE = ROOT / "workflow" / "profiles" / "slurm"
TEST_CONFIG = ROOT / "config" / "test.yaml"

#: Debian package -> a program it installs.
PACKAGES = {
    "slurmctld": "/usr/sbin/slurmctld",
    "slurmd": "/usr/sbin/slurmd",
    "slurm-client": "/usr/bin/sbatch",
    "munge": "/usr/sbin/munged",
}
#: First status check this many seconds after a submission (MinJobAge below is 300 >= 3 x 2).
INIT_SECONDS = 2
MIN_JOB_AGE = 300
#: Wall-clock limit of the cluster run (11 jobs: 2-4 minutes on 2 busy cores).
CLUSTER_LIMIT = 540
#: Where srun inside a job looks for the config; the first line marks a file written here.
SLURM_CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# written by featalign tests/test_slurm.py; removed when the test ends\n"
#: Attributes that name the time or the checkout of a run, not its content.
VOLATILE_ATTRS = (*RUN_ATTRS, "git_commit")


def _plugin_or_skip() -> None:
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip(
            "snakemake-executor-plugin-slurm is not installed in this environment "
            "(pip install 'snakemake-executor-plugin-slurm>=2.8,<3')"
        )


def _job_counts(output: str) -> dict[str, int]:
    """Job counts from snakemake's 'Job stats' table."""
    block = output.split("Job stats:")[1].split("total")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.MULTILINE)}


def test_profile_dry_run_lists_jobs_with_their_resources(tmp_path):
    _plugin_or_skip()
    res = snakemake(tmp_path, "-n", "--profile", str(PROFILE), "--configfile", str(TEST_CONFIG))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "workflow/profiles/slurm" in out  # the profile was read
    counts = _job_counts(out)
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    assert counts["dataset"] == len(cfg["datasets"])
    assert counts["features"] == len(cfg["datasets"]) * len(cfg["networks"])
    assert counts["align"] > 0 and counts["summarize"] == 1
    # the per-rule resources of the profile reach the jobs
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    for rule in ("dataset", "features", "align", "recognize", "summarize", "figure_verdict_grid"):
        want = profile["set-resources"][rule]
        block = re.search(rf"^rule {rule}:\n(.*?)\n\n", out, re.MULTILINE | re.DOTALL)
        assert block, f"no {rule} job in the dry run"
        resources = re.search(r"resources: (.*)", block[1])[1]
        assert f"mem_mb={want['mem_mb']}," in resources, resources
        assert f"runtime={want['runtime']}," in resources, resources


# ---------------------------------------------------------------------------
# A one-node Slurm cluster


def _run(cmd: list[str], timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)


def _install_or_skip() -> None:
    missing = [pkg for pkg, exe in PACKAGES.items() if not Path(exe).exists()]
    if not missing:
        return
    if os.geteuid() != 0:
        pytest.skip(f"Slurm packages {missing} are missing and installing them needs root")
    if shutil.which("apt-get") is None:
        pytest.skip(f"Slurm packages {missing} are missing and apt-get is not available")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd, limit in (
        (["apt-get", "update"], 180),
        (["apt-get", "install", "-y", "--no-install-recommends", *missing], 300),
    ):
        try:
            res = _run(cmd, timeout=limit, env=env)
        except subprocess.TimeoutExpired:
            pytest.skip(f"`{' '.join(cmd)}` did not finish in {limit} s (offline?)")
        if res.returncode != 0:
            pytest.skip(f"`{' '.join(cmd)}` failed (offline?): {res.stderr.strip()[-1500:]}")


def _munge_works() -> bool:
    try:
        cred = _run(["munge", "-n"], timeout=10)
        return (
            cred.returncode == 0
            and _run(["unmunge"], input=cred.stdout, timeout=10).returncode == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _total_memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def _slurm_conf(folder: Path, host: str) -> str:
    mem = _total_memory_mb()
    real_memory = min(int(mem * 0.9), mem - 512)  # a little below what slurmd measures
    return (
        MARKER
        + f"""\
ClusterName=featalign-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
MinJobAge={MIN_JOB_AGE}
ReturnToService=2
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={real_memory} State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""
    )


def _start(cmd: list[str], log: Path, **kw) -> subprocess.Popen:
    with open(log, "ab") as fh:
        return subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **kw,
        )


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM one daemon started here, SIGKILL it after 10 s."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _tail(path: Path, n: int = 1500) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else f"({path} not written)"


def _start_munged(folder: Path) -> subprocess.Popen | None:
    """munged in the foreground as user munge; None when a working one is already running."""
    if _munge_works():
        return None
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        res = _run(["runuser", "-u", "munge", "--", "mungekey", "--create"], timeout=30)
        if res.returncode != 0:
            pytest.skip(f"cannot create the munge key {key}: {res.stderr.strip()}")
    run_dir = Path("/run/munge")
    run_dir.mkdir(mode=0o755, exist_ok=True)
    shutil.chown(run_dir, "munge", "munge")
    proc = _start(
        ["/usr/sbin/munged", "--foreground"],
        folder / "munged.log",
        user="munge",
        group="munge",
        extra_groups=[],
    )
    for _ in range(50):
        if _munge_works():
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    _stop(proc)
    pytest.skip(f"munged did not start: {_tail(folder / 'munged.log')}")


@pytest.fixture(scope="module")
def slurm_cluster() -> Iterator[dict[str, str]]:
    """A running one-node Slurm; yields the environment for its clients (SLURM_CONF set)."""
    _plugin_or_skip()
    _install_or_skip()
    # a short path: slurmd puts unix sockets (at most 108 bytes) in its spool folder
    folder = Path(tempfile.mkdtemp(prefix="featalign-slurm-"))
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    host = _run(["hostname", "-s"]).stdout.strip()
    conf = SLURM_CONF
    if conf.exists() and not conf.read_text(errors="replace").startswith(MARKER):
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(
            f"{conf} exists and was not written by this test: not overwriting a real Slurm config"
        )
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(_slurm_conf(folder, host))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started: list[subprocess.Popen] = []
    try:
        munged = _start_munged(folder)
        if munged is not None:
            started.append(munged)
        started.append(
            _start(
                ["/usr/sbin/slurmctld", "-D", "-c", "-f", str(conf)],
                folder / "slurmctld.out",
                env=env,
            )
        )
        started.append(
            _start(["/usr/sbin/slurmd", "-D", "-f", str(conf)], folder / "slurmd.out", env=env)
        )
        state = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            res = _run(["sinfo", "-h", "-o", "%T"], timeout=10, env=env)
            state = (res.stdout + res.stderr).strip()
            if state == "idle":
                break
            if any(p.poll() is not None for p in started):
                break
            time.sleep(1)
        else:
            state += " (after 60 s)"
        if state != "idle":
            logs = "\n".join(
                f"--- {name}:\n{_tail(folder / name)}"
                for name in ("slurmctld.log", "slurmctld.out", "slurmd.log", "slurmd.out")
            )
            pytest.skip(f"the one-node Slurm did not become idle: sinfo says {state!r}\n{logs}")
        yield env
    finally:
        # cancel what is left of our jobs (this slurmctld only knows ours), then stop the daemons
        if started:
            try:
                ids = _run(["squeue", "-h", "-o", "%i"], timeout=10, env=env).stdout.split()
                if ids:
                    _run(["scancel", *ids], timeout=10, env=env)
                    time.sleep(2)
            except (OSError, subprocess.TimeoutExpired):
                pass
        for proc in reversed(started):
            _stop(proc)
        conf.unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------
# The same small run through Slurm and locally


def _small_config(path: Path) -> Path:
    """config/test.yaml cut to one dataset and one cheap network (11 jobs, every rule but train)."""
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    name = "tiny_photos"
    cfg["datasets"] = {name: cfg["datasets"][name]}
    cfg["networks"] = {"pointwise": {"width": 4}}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _attrs(attrs: dict) -> dict:
    return {
        k: (v.tolist() if isinstance(v, np.ndarray) else v)
        for k, v in attrs.items()
        if k not in VOLATILE_ATTRS
    }


def _assert_same_netcdf(a: Path, b: Path) -> None:
    with xr.open_datatree(a) as ta, xr.open_datatree(b) as tb:
        paths_a = sorted(node.path for node in ta.subtree)
        assert paths_a == sorted(node.path for node in tb.subtree), a
        for path in paths_a:
            da, db = ta[path].to_dataset(), tb[path].to_dataset()
            xr.testing.assert_allclose(da, db, rtol=1e-6, atol=1e-8)
            assert _attrs(da.attrs) == _attrs(db.attrs), f"{a}:{path} attributes"
            for var in da.variables:
                assert _attrs(da[var].attrs) == _attrs(db[var].attrs), (
                    f"{a}:{path}/{var} attributes"
                )


def _outputs(work: Path) -> list[str]:
    return sorted(str(p.relative_to(work)) for p in (work / "results").rglob("*") if p.is_file())


def test_slurm_run_equals_local_run(slurm_cluster, tmp_path):
    config = _small_config(tmp_path / "small.yaml")
    on_slurm, local = tmp_path / "slurm", tmp_path / "local"
    on_slurm.mkdir()
    cmd = [
        "timeout",
        "-k",
        "10",
        str(CLUSTER_LIMIT),
        str(BIN / "snakemake"),
        "--snakefile",
        str(ROOT / "workflow" / "Snakefile"),
        "--directory",
        str(on_slurm),
        "--profile",
        str(PROFILE),
        "--configfile",
        str(config),
        # a node without slurmdbd: squeue, not sacct (see the module docstring)
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        str(INIT_SECONDS),
    ]
    # the local run alongside: the test takes as long as the slower of the two
    local_run = ThreadPoolExecutor(1).submit(
        snakemake,
        local,
        "--cores",
        "2",
        "--configfile",
        str(config),
        timeout=CLUSTER_LIMIT + 30,
    )
    start = time.monotonic()
    res = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CLUSTER_LIMIT + 30,
        check=False,
        env={**slurm_cluster, "PYTHONHASHSEED": "0"},
    )
    took = time.monotonic() - start
    local_res = local_run.result()
    out = res.stdout + res.stderr
    assert res.returncode != 124, f"the Slurm run passed {CLUSTER_LIMIT} s:\n{out[-4000:]}"
    assert res.returncode == 0, out[-4000:]
    submitted = re.findall(r"SLURM jobid (\d+)", out)
    jobs = _job_counts(out)
    assert len(submitted) == sum(jobs.values()) - jobs.get("all", 0), out[-4000:]
    print(f"\nSlurm run: {len(submitted)} jobs in {took:.0f} s")

    assert local_res.returncode == 0, local_res.stderr[-3000:]

    files = _outputs(local)
    assert files == _outputs(on_slurm)
    assert any(f.endswith(".nc") for f in files) and any(f.endswith(".csv") for f in files)
    for name in files:
        if name.endswith(".nc"):
            _assert_same_netcdf(local / name, on_slurm / name)
        elif name.endswith(".csv"):
            pd.testing.assert_frame_equal(
                pd.read_csv(local / name),
                pd.read_csv(on_slurm / name),
                check_exact=False,
                rtol=1e-6,
            )
        elif name.endswith(".md"):
            assert (local / name).read_text() == (on_slurm / name).read_text(), name
