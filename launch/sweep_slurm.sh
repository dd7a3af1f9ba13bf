#!/usr/bin/env bash
# A sweep as a SLURM job array: task i of N runs the i-th share of the grid.
#
#   sbatch --array=0-7 launch/sweep_slurm.sh --config=configs/mnist.py --sweep=digits \
#       --workdir=/shared/runs/digits
#   python -m launch.collect /shared/runs/digits     # once the array is done
#
# Every task writes into the same root (a shared file system); a task that
# was preempted or failed is resubmitted with the same index
# (`sbatch --array=3 ...`) and skips its finished runs. Edit the resources
# below to your cluster.
#SBATCH --job-name=hamforget-sweep
#SBATCH --cpus-per-task=8
#SBATCH --gres=gpu:1
#SBATCH --time=12:00:00
#SBATCH --output=slurm-%A_%a.out
set -euo pipefail

cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
exec "${PYTHON:-python3}" -m launch.sweep \
    --num_tasks="${SLURM_ARRAY_TASK_COUNT:-1}" --task_index="${SLURM_ARRAY_TASK_ID:-0}" "$@"
