"""A real single-node SLURM for the tests: Debian's slurm-wlm and munge, two fake GPUs.

Nothing is installed here: ``make test-slurm`` installs the packages first
(``tools/install-slurm.sh``, root and apt-get) and sets ``WSSS_TEST_SLURM=1``; elsewhere
(``make test``) the test is skipped with the reason, and the machine is left as it is.
``start_cluster(dir)`` writes slurm.conf and gres.conf, starts munged (unless one runs),
slurmctld and slurmd, and waits until the node takes jobs. ``stop()`` stops by PID the
daemons it started and removes the configuration. The daemons listen on loopback only
(ports 6817 / 6818). The configuration goes to /etc/slurm, where every SLURM command looks:
the SLURM executor clears ``SLURM_*`` variables (``SLURM_CONF`` among them) inside jobs.
A machine that already has a SLURM configuration is left alone (the test is skipped).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged")
ETC = Path("/etc/slurm")
MARK = "# written by the wsss test suite\n"
OPT_IN = "WSSS_TEST_SLURM"  # set by `make test-slurm`


def unavailable_reason() -> str | None:
    """Why the SLURM test does not run here, or None when it does."""
    missing = [d for d in DAEMONS if not Path(d).exists()]
    missing += [] if shutil.which("sbatch") else ["sbatch"]
    if missing:
        return (
            f"{', '.join(Path(m).name for m in missing)} not installed; `make test-slurm` "
            "installs slurm-wlm and munge (as root, with apt-get) and runs this test"
        )
    if os.environ.get(OPT_IN) != "1":
        return (
            "it starts SLURM daemons and writes /etc/slurm: it runs under `make test-slurm` "
            f"(or with {OPT_IN}=1)"
        )
    if os.name != "posix" or os.geteuid() != 0:
        return "starting SLURM daemons needs root"
    conf = ETC / "slurm.conf"
    if conf.exists() and not conf.read_text().startswith(MARK):
        return f"{conf} exists: this machine has its own SLURM, which the test does not touch"
    return None


SLURM_CONF = (
    MARK
    + """\
ClusterName=wsss-test
SlurmctldHost=localhost
SlurmctldAddr=127.0.0.1
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MinJobAge=3600
ReturnToService=2
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=8000 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""
)


@dataclass
class Cluster:
    dir: Path
    pids: list[int] = field(default_factory=list)

    def run(self, *cmd: str) -> str:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    def stop(self) -> None:
        for pid in reversed(self.pids):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        self.pids.clear()
        for name in ("slurm.conf", "gres.conf"):
            path = ETC / name
            if path.exists() and path.read_text().startswith(MARK):
                path.unlink()


def _pid_from(path: Path, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().strip()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} not written: the daemon did not start")
        time.sleep(0.1)
    return int(path.read_text().split()[0])


def start_cluster(directory: Path, cpus: int = 2) -> Cluster:
    """Start munged, slurmctld and slurmd with two fake GPUs (installed beforehand:
    ``tools/install-slurm.sh``)."""
    directory.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool", "dev"):
        (directory / sub).mkdir(exist_ok=True)
    # Two fake GPU devices for gres (character devices like /dev/null).
    for i in range(2):
        node = directory / "dev" / f"gpu{i}"
        if not node.exists():
            os.mknod(node, 0o666 | 0o020000, os.makedev(1, 3))
    ETC.mkdir(parents=True, exist_ok=True)
    (ETC / "slurm.conf").write_text(SLURM_CONF.format(dir=directory, cpus=cpus))
    (ETC / "gres.conf").write_text(
        MARK + f"NodeName=localhost Name=gpu File={directory}/dev/gpu[0-1]\n"
    )
    cluster = Cluster(directory)
    try:
        if subprocess.run(["munge", "-n"], capture_output=True).returncode != 0:
            run_dir = Path("/run/munge")
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.chown(run_dir, "munge", "munge")
            pidfile = run_dir / "munged.pid"
            pidfile.unlink(missing_ok=True)
            subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
            cluster.pids.append(_pid_from(pidfile))
        subprocess.run(["/usr/sbin/slurmctld", "-i"], check=True)
        cluster.pids.append(_pid_from(directory / "slurmctld.pid"))
        subprocess.run(["/usr/sbin/slurmd", "-N", "localhost"], check=True)
        cluster.pids.append(_pid_from(directory / "slurmd.pid"))
        deadline = time.monotonic() + 60
        while "idle" not in cluster.run("sinfo", "-h", "-o", "%T"):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    "the SLURM node never became idle:\n" + cluster.run("sinfo", "-N", "-l")
                )
            time.sleep(0.5)
    except BaseException:
        cluster.stop()
        raise
    return cluster
