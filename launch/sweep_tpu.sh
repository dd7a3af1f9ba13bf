#!/usr/bin/env bash
# One sweep over every worker of a TPU VM (or several single-host TPU VMs):
# the same command on each; each runs its share of the grid, picked by its
# worker id, into one shared root (a gs:// bucket is not supported yet: use a
# shared disk / Filestore mount, or a root per worker and merge them with
# launch.collect).
#
#   gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all --command="
#     cd hamforget && launch/sweep_tpu.sh --config=configs/mnist.py --sweep=digits \
#       --workdir=/mnt/shared/digits"
#   python -m launch.collect /mnt/shared/digits
#
# Task index and count: $TASK_INDEX / $NUM_TASKS when set (any cluster), else
# the TPU VM's worker number and worker count from the metadata server.
#
# Each worker trains alone (no jax.distributed: HAMFORGET_DISTRIBUTED is
# unset). On a multi-host slice (v4-16 and up), libtpu expects every host of
# the slice in one program; to use each host's chips alone set its TPU_*
# bounds, e.g. for 4 chips a host (v4, v5p):
#   export TPU_CHIPS_PER_PROCESS_BOUNDS=2,2,1 TPU_PROCESS_BOUNDS=1,1,1 TPU_VISIBLE_CHIPS=0,1,2,3
# (not verified on a pod slice here; single-host VMs need nothing).
set -euo pipefail

metadata() {
  curl -sf -H "Metadata-Flavor: Google" \
    "http://metadata.google.internal/computeMetadata/v1/instance/attributes/$1"
}

if [[ -z "${TASK_INDEX:-}" ]]; then
  TASK_INDEX="${TPU_WORKER_ID:-$(metadata agent-worker-number || echo 0)}"
fi
if [[ -z "${NUM_TASKS:-}" ]]; then
  # worker-network-endpoints: one comma-separated entry per worker.
  endpoints="$(metadata worker-network-endpoints || true)"
  if [[ -n "${endpoints}" ]]; then
    NUM_TASKS="$(tr ',' '\n' <<<"${endpoints}" | grep -c .)"
  else
    NUM_TASKS=1
  fi
fi

cd "$(dirname "$0")/.."
echo "sweep: worker ${TASK_INDEX} of ${NUM_TASKS} on $(hostname)" >&2
exec "${PYTHON:-python3}" -m launch.sweep --num_tasks="${NUM_TASKS}" --task_index="${TASK_INDEX}" "$@"
