#!/usr/bin/env bash
# The main job on several hosts: one program over every host's devices
# (jax.distributed), the same command on each. Process 0 writes every file;
# the workdir must be one folder every host sees (a shared disk or Filestore
# mount: gs:// paths are not supported yet).
#
# TPU VM pod slice (JAX finds the coordinator itself):
#   gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all --command="
#     cd hamforget && launch/main_multihost.sh --config=configs/ham10000.py \
#       --workdir=/mnt/shared/ham"
#
# GPU nodes (or any hosts), with the coordinator named, on node i of N:
#   COORDINATOR=node0:1234 NUM_PROCESSES=N PROCESS_ID=i launch/main_multihost.sh \
#     --config=configs/ham10000.py --workdir=/shared/runs/ham
# (One multi-GPU host needs none of this: `python -m launch.main` uses every
# GPU it sees, batches sharded over them.)
#
# Trying it on one machine: two CPU processes of one device each, as
# tests/test_distributed.py runs it (results equal to one process of two):
#   for i in 0 1; do COORDINATOR=127.0.0.1:1234 NUM_PROCESSES=2 PROCESS_ID=$i \
#     launch/main_multihost.sh --config=configs/mnist.py:local \
#       --config.mesh.cpu_devices=1 --workdir=/tmp/two & done; wait
set -euo pipefail

if [[ -n "${COORDINATOR:-}" ]]; then
  export JAX_COORDINATOR_ADDRESS="${COORDINATOR}" JAX_NUM_PROCESSES="${NUM_PROCESSES:?}" \
      JAX_PROCESS_ID="${PROCESS_ID:?}"
else
  export HAMFORGET_DISTRIBUTED=1  # TPU VM, SLURM or Open MPI: jax.distributed finds its peers
fi
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m launch.main "$@"
