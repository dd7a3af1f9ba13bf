"""One process of the two-process test (tests/test_distributed.py).

Usage: python tests/distributed_worker.py PROCESS_ID PORT [NUM_PROCESSES]
With NUM_PROCESSES=1 it computes the same step on one process, as reference.
Prints one JSON line: the loss and a checksum of the updated parameters.
"""

import json
import sys

import jax
import numpy as np


def main():
  process_id, port = int(sys.argv[1]), int(sys.argv[2])
  num_processes = int(sys.argv[3]) if len(sys.argv) > 3 else 2
  jax.config.update("jax_num_cpu_devices", 2)
  jax.config.update("jax_platforms", "cpu")
  if num_processes > 1:
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                               num_processes=num_processes, process_id=process_id)
  from configs import common
  from hamforget import sharding, train
  from hamforget.models import build_model

  config = common.base_config()
  config.model.width = 0.0625
  model = build_model(config.model, 3)
  variables = train.init_variables(model, (8, 8, 1), jax.random.key(0))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (16, 8, 8, 1)).astype(np.uint8)
  labels = rng.integers(0, 3, 16).astype(np.int32)
  # Each process loads only its own slice of the global batch.
  per_process = len(labels) // num_processes
  local = slice(process_id * per_process, (process_id + 1) * per_process)

  mesh = sharding.make_mesh()
  tx = train.make_optimizer(config.train, 10, 10)
  with jax.set_mesh(mesh):
    batch = sharding.global_batch((images[local], labels[local]), mesh)
    variables = sharding.replicate(variables, mesh)

    @jax.jit
    def step(variables, batch):
      # Global arrays spanning other processes' devices are arguments, never
      # closed-over constants.
      def loss_fn(params, batch_stats, rng, step):
        x, y = batch
        logits, batch_stats = train.apply_model(
            model, {"params": params, "batch_stats": batch_stats},
            (x.astype(np.float32) / 255 - 0.5) / 0.5, train=True)
        return train.cross_entropy(logits, y).mean(), (batch_stats, {})

      params, _, _, metrics = train.minimize(
          loss_fn, variables["params"], variables["batch_stats"], tx,
          tx.init(variables["params"]), jax.random.key(1), 0, 1)
      checksum = sum(jax.numpy.sum(jax.numpy.abs(p)) for p in jax.tree.leaves(params))
      return metrics["loss"][0], checksum

    loss, checksum = step(variables, batch)
  print(json.dumps({"process": process_id, "devices": jax.device_count(),
                    "loss": float(loss), "checksum": float(checksum)}), flush=True)


if __name__ == "__main__":
  main()
