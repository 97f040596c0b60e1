#!/usr/bin/env bash
# Install what `make test-slurm` needs for its single-node SLURM: Debian's slurm-wlm and
# munge (the daemons slurmctld, slurmd, munged and the client commands sbatch, squeue...).
# Needs root and apt-get. Does nothing when they are already installed. The test itself
# (tests/test_slurm.py) writes /etc/slurm/{slurm,gres}.conf, starts the daemons on loopback
# ports 6817-6818 and stops them, and removes its configuration, when it ends.
set -euo pipefail

have_slurm() {
    [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] && [ -x /usr/sbin/munged ] \
        && command -v sbatch >/dev/null
}

if have_slurm; then
    echo "install-slurm: slurm-wlm and munge are installed"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-slurm: slurm-wlm and munge are missing; installing them needs root" \
        "(sudo apt-get install slurm-wlm munge)" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null; then
    echo "install-slurm: slurm-wlm and munge are missing and there is no apt-get;" \
        "install SLURM (slurmctld, slurmd, munged, sbatch) with this system's packages" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "install-slurm: apt-get install slurm-wlm munge"
if ! apt-get install -y -q slurm-wlm munge >/dev/null; then
    apt-get update -q >/dev/null
    apt-get install -y -q slurm-wlm munge >/dev/null
fi
have_slurm || { echo "install-slurm: installed, but slurmctld/slurmd/munged/sbatch are not all there" >&2; exit 1; }
echo "install-slurm: done"
