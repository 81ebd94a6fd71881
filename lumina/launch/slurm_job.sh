#!/bin/bash
# The body of every SLURM batch script that `lumina slurm` writes (lumina/launch/slurm.py). The
# generated scripts hold only what differs per job (#SBATCH lines, interpreter, checkpoint
# directory, launcher, training flags) and exec this file, so a fix to the rendezvous, resume, a
# launcher, signals or requeueing lands here once instead of in every generated copy.
#
# Written by hand and committed, not generated, and kept beside its renderer rather than in slurm/
# (which holds only generated files, each checked against the generator). sbatch runs a copy of
# the batch script from its spool directory, so the batch script finds this file under the
# repository root it was submitted from ($LUMINA_ROOT, else $SLURM_SUBMIT_DIR); this file is not
# copied, so it finds the repository from its own path.
#
#   bash lumina/launch/slurm_job.sh --launcher deepspeed|torchrun|srun --python PYTHON --save DIR \
#     --nodes N --ntasks-per-node M -- TRAIN_ARGS...
#
# --nodes and --ntasks-per-node are the batch script's directives, used only where the job's
# environment lacks SLURM_JOB_NUM_NODES / SLURM_NTASKS_PER_NODE. The batch script must `exec` this
# file (not run it as a child): `--signal=B:USR1` signals the batch shell, and exec keeps that
# process, in which the USR1 trap below is set.
set -euo pipefail

usage() {
  echo "lumina-slurm: $1. Usage: bash lumina/launch/slurm_job.sh --launcher deepspeed|torchrun|srun" \
    "--python PYTHON --save DIR --nodes N --ntasks-per-node M -- TRAIN_ARGS..." >&2
  exit 2
}
LAUNCHER='' PYTHON='' SAVE='' NODES='' PER_NODE=''
while (( $# )) && [[ $1 != -- ]]; do
  (( $# >= 2 )) || usage "$1 has no value"
  case $1 in
    --launcher) LAUNCHER=$2 ;;
    --python) PYTHON=$2 ;;
    --save) SAVE=$2 ;;
    --nodes) NODES=$2 ;;
    --ntasks-per-node) PER_NODE=$2 ;;
    *) usage "unknown option $1" ;;
  esac
  shift 2
done
(( $# )) || usage "no -- before the training flags"
shift
TRAIN_ARGS=("$@")
case $LAUNCHER in
  deepspeed|torchrun|srun) ;;
  *) usage "--launcher '$LAUNCHER' is not one of deepspeed, torchrun, srun" ;;
esac
[[ -n $PYTHON && -n $SAVE && -n $NODES && -n $PER_NODE ]] ||
  usage "--python, --save, --nodes and --ntasks-per-node are all required"

# Relative paths (the checkpoint directory, DeepSpeed JSON, run directory) are from the root.
cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.."

# Counts from the job (so `sbatch --nodes=N --ntasks-per-node=M` carries through), the batch
# script's directives as the fallback.
NODES=${SLURM_JOB_NUM_NODES:-$NODES}
PER_NODE=${SLURM_NTASKS_PER_NODE:-$PER_NODE}
mapfile -t HOSTS < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
if (( ${#HOSTS[@]} == 0 )); then
  echo "lumina-slurm: 'scontrol show hostnames $SLURM_JOB_NODELIST' listed no hosts" >&2
  exit 2
fi
export MASTER_ADDR=${MASTER_ADDR:-${HOSTS[0]}}
export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}

mkdir -p -- "$SAVE"
LOAD=()
if [[ -f $SAVE/latest ]]; then
  LOAD=(--load "$SAVE")  # a requeued or resubmitted job resumes from its last checkpoint
fi
echo "lumina-slurm: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): $NODES node(s) x $PER_NODE rank(s)," \
  "rendezvous $MASTER_ADDR:$MASTER_PORT, checkpoints $SAVE${LOAD[*]:+ (resuming)}"

# Every rank is an srun task or a child of one, so SLURM's signals reach the ranks and its
# accounting sees them.
case $LAUNCHER in
  srun)
    # One srun task per rank; the trainer reads SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID.
    LAUNCH=(srun --kill-on-bad-exit=1 "$PYTHON" -u -m lumina.pretrain "${TRAIN_ARGS[@]}" --save "$SAVE" "${LOAD[@]}")
    ;;
  torchrun)
    # One torchrun per node, given all of the node's CPUs. It starts with SIGUSR1 ignored (kept
    # across exec): the forwarded signal must not end the agent while its workers, which install
    # their own handler, save the checkpoint.
    LAUNCH=(srun --kill-on-bad-exit=1 --nodes="$NODES" --ntasks="$NODES" --ntasks-per-node=1
      --cpus-per-task="${SLURM_CPUS_ON_NODE:-1}"
      bash -c 'trap "" USR1; exec "$@"' torchrun
      "$PYTHON" -m torch.distributed.run --nnodes="$NODES" --nproc-per-node="$PER_NODE"
      --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID"
      -m lumina.pretrain "${TRAIN_ARGS[@]}" --save "$SAVE" "${LOAD[@]}")
    ;;
  deepspeed)
    # DeepSpeed's runner builds one srun over the hostfile's slots (--launcher slurm, also on one
    # node: --force_multi), so every rank is a task of the job step.
    HOSTFILE=$(mktemp "${TMPDIR:-/tmp}/lumina-hostfile.XXXXXX")
    trap 'rm -f -- "$HOSTFILE"' EXIT
    for host in "${HOSTS[@]}"; do printf '%s slots=%s\n' "$host" "$PER_NODE"; done > "$HOSTFILE"
    LAUNCH=("$PYTHON" -m deepspeed.launcher.runner --launcher slurm --force_multi --no_ssh_check
      --launcher_args=--kill-on-bad-exit=1
      --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT"
      lumina/pretrain.py "${TRAIN_ARGS[@]}" --save "$SAVE" "${LOAD[@]}")
    ;;
esac

# --signal=B:USR1 reaches only this shell: forward it to the job's steps (not this shell), let
# the ranks save and exit, then requeue. The launcher runs in the background so that `wait`
# returns, and the trap runs, as soon as a signal arrives.
PREEMPTED=0
on_usr1() {
  PREEMPTED=1
  echo "lumina-slurm: SIGUSR1 (time limit or preemption ahead): the ranks checkpoint and exit"
  scancel --signal=USR1 "$SLURM_JOB_ID" || true
}
trap on_usr1 USR1
trap 'echo "lumina-slurm: SIGTERM: waiting for the ranks to checkpoint and exit"' TERM
"${LAUNCH[@]}" &
PID=$!
while kill -0 "$PID" 2>/dev/null; do
  wait "$PID" || true  # a trapped signal ends `wait` early; keep waiting while the launcher runs
done
STATUS=0
wait "$PID" || STATUS=$?  # the launcher's exit status, which bash keeps after it ends
if (( PREEMPTED )); then
  echo "lumina-slurm: requeueing job $SLURM_JOB_ID (launcher exit status $STATUS)"
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$STATUS"
