"""Meshes and shardings: one way of writing parallel code, jit + NamedSharding.

Batches are split over the `data` mesh axis; parameters, optimiser state and
device-resident datasets are replicated. The mesh is set once by the launcher
with `jax.set_mesh(mesh)`; code inside jit calls `shard_batch` so that XLA
partitions the step and inserts the gradient all-reduce itself. Without a mesh
in context (unit tests, a single device) `shard_batch` is the identity, so the
same functions run everywhere.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A 1-D mesh over `num_devices` devices (0 = all), axis `data`, Auto axis type.

  Auto (not Explicit, the `jax.make_mesh` default since jax 0.9) because the
  code states shardings with constraints at batch boundaries and lets XLA
  propagate the rest.
  """
  available = jax.device_count()
  n = num_devices or available
  if n > available:
    raise ValueError(f"mesh.num_devices={n} but only {available} devices are visible")
  return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(AxisType.Auto,),
                       devices=jax.devices()[:n])


def data_size() -> int:
  """Size of the `data` axis of the mesh in context (1 when there is none)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or DATA_AXIS not in mesh.axis_names:
    return 1
  return mesh.shape[DATA_AXIS]


def shard_batch(tree):
  """Constrains every leaf's leading (batch) axis to the `data` mesh axis.

  Identity without a mesh in context, or for leaves whose batch axis does not
  divide evenly (XLA would pad; callers choose divisible batch sizes).
  """
  n = data_size()
  if n == 1:
    return tree

  def constrain(x):
    if x.ndim == 0 or x.shape[0] % n:
      return x
    return jax.lax.with_sharding_constraint(x, P(DATA_AXIS))

  return jax.tree.map(constrain, tree)


def replicated() -> NamedSharding | None:
  """The replicated sharding on the mesh in context (None without one).

  For `jax.jit(..., out_shardings=replicated())`: state (variables, optimiser
  state, fit carries) is created and stepped fully replicated, stated rather
  than left to propagation.
  """
  mesh = jax.sharding.get_mesh()
  return None if mesh.empty else NamedSharding(mesh, P())


def replicate(tree, mesh: jax.sharding.Mesh):
  """Places a host or device pytree on every device of `mesh` (multi-host safe)."""
  sharding = NamedSharding(mesh, P())

  def put(x):
    x = np.asarray(x) if not isinstance(x, jax.Array) else x
    if jax.process_count() == 1:
      return jax.device_put(x, sharding)
    # Each process holds the full value; build the global array from it.
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, tree)


def to_host(x) -> np.ndarray:
  """A jax.Array (or anything array-like) as one numpy array on this host.

  On several processes an output sharded over `data` is not addressable from
  any one of them: every process gathers it whole (a collective, so every
  process must call this for the same arrays in the same order).
  """
  if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def global_batch(local_tree, mesh: jax.sharding.Mesh):
  """Assembles a global batch, sharded over `data`, from each process's local slice."""
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_tree)


def maybe_initialize_distributed() -> None:
  """Calls `jax.distributed.initialize()` when launched as one of several processes.

  Recognised: an explicit coordinator (JAX_COORDINATOR_ADDRESS with
  JAX_NUM_PROCESSES and JAX_PROCESS_ID), or a TPU VM pod / SLURM / Open MPI
  environment that JAX detects by itself (HAMFORGET_DISTRIBUTED=1 asks for that).
  """
  address = os.environ.get("JAX_COORDINATOR_ADDRESS")
  if address:
    jax.distributed.initialize(
        coordinator_address=address,
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]))
  elif os.environ.get("HAMFORGET_DISTRIBUTED") == "1":
    jax.distributed.initialize()


def configure_cpu_devices(count: int) -> None:
  """Asks XLA for `count` virtual CPU devices; must run before JAX touches a backend.

  On CPU, several devices with a data-parallel mesh use the cores better than
  one device (XLA's CPU convolutions are single-threaded per op in places).
  """
  if count > 1:
    jax.config.update("jax_num_cpu_devices", count)
