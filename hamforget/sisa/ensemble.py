"""The SISA ensemble as one Flax module, so the evaluation scores it like any model.

`Ensemble(member, num_members, aggregation)` holds the S shard models'
variables stacked on a leading axis ({"params": {"member": ...},
"batch_stats": {"member": ...}}) and maps images to aggregated logits with
`nn.vmap` over the members: `model.apply(variables, images, train=False)`
works as for a single model, and so do `train.predict`, the suite's metrics
and the relearning curves (train mode updates each member's statistics).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

AGGREGATIONS = ("vote", "softmax")
MEMBER = "member"


def aggregate(logits: jax.Array, aggregation: str) -> jax.Array:
  """Member logits (S, B, K) -> the ensemble's logits (B, K), log-probabilities.

  - "softmax": log of the members' mean softmax.
  - "vote": log((votes + mean softmax) / (S + 1)), votes being each class's
    count of members whose argmax it is. Its argmax is the majority vote,
    ties broken by the mean softmax (votes are integers, the mean softmax is
    below 1 and sums to 1); unlike a bare count it has a gradient (through
    the softmax) and no log(0).

  Probabilities are floored at float32's smallest normal number, so a class
  whose softmax underflows costs a finite 87 nats, not an infinite loss.
  """
  log = lambda p: jnp.log(jnp.maximum(p, jnp.finfo(jnp.float32).tiny))
  mean = jax.nn.softmax(logits, axis=-1).mean(axis=0)
  if aggregation == "softmax":
    return log(mean)
  if aggregation == "vote":
    num_members, num_classes = logits.shape[0], logits.shape[-1]
    votes = jax.nn.one_hot(jnp.argmax(logits, -1), num_classes, dtype=mean.dtype).sum(axis=0)
    return log((votes + mean) / (num_members + 1))
  raise ValueError(f"sisa.aggregation={aggregation!r}: expected one of {AGGREGATIONS}")


class Ensemble(nn.Module):
  """S copies of `member` with stacked variables, aggregated.

  Attributes:
    member: the shard model (every shard has its shapes).
    num_members: S.
    aggregation: "vote" or "softmax" (`aggregate`).
  """
  member: Any
  num_members: int
  aggregation: str = "vote"

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Images (B, H, W, C) in [-1, 1] -> aggregated logits (B, K) float32."""
    members = nn.vmap(lambda module, x: module(x, train=train),
                      variable_axes={"params": 0, "batch_stats": 0, "intermediates": 0},
                      split_rngs={"params": True}, in_axes=None, out_axes=0,
                      axis_size=self.num_members)
    return aggregate(members(self.member, x), self.aggregation)


def ensemble_variables(params, batch_stats) -> dict:
  """The Ensemble's variables from member params and statistics stacked over S."""
  return {"params": {MEMBER: params}, "batch_stats": {MEMBER: batch_stats}}


def member_variables(variables: dict, member: int) -> dict:
  """Member `member`'s own variables, {"params", "batch_stats"}, from the Ensemble's."""
  take = lambda tree: jax.tree.map(lambda x: x[member], tree[MEMBER])
  return {"params": take(variables["params"]), "batch_stats": take(variables["batch_stats"])}
