#!/usr/bin/env bash
# Install what the SLURM tests (`pytest -m slurm tests/slurm`) need: slurmctld, slurmd, the client
# commands (sbatch, srun, scontrol, ...) and munge. Does nothing when they are already there.
# Debian / Ubuntu, as root; no accounting database (the tests read `scontrol show job`).
set -euo pipefail
PATH=$PATH:/usr/sbin:/sbin  # the daemons live in sbin, often not on a user's PATH

if command -v sbatch >/dev/null && command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
    && command -v munged >/dev/null; then
  exit 0
fi
if [[ $EUID -ne 0 ]] || ! command -v apt-get >/dev/null; then
  echo "install_slurm.sh: SLURM (sbatch, slurmctld, slurmd) and munge are missing, and this script can" \
       "only install them as root with apt-get. Install the packages slurm-wlm and munge yourself" \
       "(Debian/Ubuntu: sudo apt-get install slurm-wlm munge), or skip the tests marked slurm." >&2
  exit 1
fi
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge
