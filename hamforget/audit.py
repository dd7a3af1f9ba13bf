"""The audit record of a run's deletions: what was forgotten, by what, and how well.

    record = audit.build_record(config, data, models, results, started_at=...)
    audit.write_record(workdir, record)        # WORKDIR/audit.json
    problems = audit.check_record(record)      # [] when its content is intact
    audit.verify_workdir(workdir)              # and the stored models against it

`audit.json` holds one entry per unlearned model (`retrain` and every
operator): the forget request, how many examples it forgot and a SHA-256 of
their sorted ids (never the ids or the data themselves), the operator and its
resolved hyper-parameters, the `files.tree_digest` of the variables it was
made from (before: the original's, or for SISA its ensemble's before the
deletion) and of its own (after), and the figures that
verify it against `retrain` (the exact deletion). Around the entries: the
data's digest, software versions, timestamps, and `record_sha256`, the
SHA-256 of the record's canonical JSON without that field, so an edited or
damaged record is detected (`python -m launch.verify WORKDIR` checks it and
the stored models against it).

The self-digest detects edits and damage, not a forger: whoever rewrites the
record can recompute it. Keep a copy of `record_sha256` (it is printed by
`launch.verify`) wherever the record must be trusted later.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import math
import os
import platform
from typing import Any, Iterable, Mapping

from hamforget import files, unlearn
from hamforget.store import DamagedModelError, ModelStore

AUDIT_NAME = "audit.json"
FORMAT = "hamforget.audit/1"
DIGEST_KEY = "record_sha256"
REFERENCE = "retrain"
# Distributions whose versions decide what a run computes.
SOFTWARE = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "hamforget")
# Figures of each model, and of `retrain`, copied from the evaluation's results.
FIGURES = ("acc_forget", "acc_retain", "acc_test", "mia_acc", "js_to_retrain_forget")


def now() -> str:
  """The current UTC time, ISO 8601 to the second (e.g. 2026-01-31T12:00:00+00:00)."""
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def ids_digest(ids: Iterable[Any]) -> str:
  """SHA-256 (hex) of the ids as text, sorted, one per line (UTF-8, no final newline).

  Anyone holding the list of forgotten ids can recompute it:
  `hashlib.sha256("\\n".join(sorted(ids)).encode()).hexdigest()`.
  """
  return hashlib.sha256("\n".join(sorted(str(i) for i in ids)).encode()).hexdigest()


def software_versions() -> dict[str, str]:
  """python and each of `SOFTWARE` -> its version ("not installed" when absent)."""
  versions = {"python": platform.python_version()}
  for name in SOFTWARE:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = "not installed"
  return versions


def _number(value) -> float | None:
  """A finite float, or None (JSON has no NaN; an undefined metric is null)."""
  if value is None:
    return None
  value = float(value)
  return value if math.isfinite(value) else None


def _gap(a: float | None, b: float | None, absolute: bool) -> float | None:
  if a is None or b is None:
    return None
  return abs(a - b) if absolute else a - b


def verification(results: Mapping[str, Mapping[str, float]], name: str) -> dict[str, Any]:
  """Model `name`'s figures beside `retrain`'s, and its distance to them.

  acc_forget_gap = |acc_forget - retrain's| and mia_acc_gap likewise (0 is
  retrain's own forgetting); acc_test_gap = acc_test - retrain's (signed: the
  test accuracy gained or lost). None where a figure is undefined.
  """
  row, reference = results.get(name, {}), results.get(REFERENCE, {})
  figures = {key: _number(row.get(key)) for key in FIGURES}
  ref = {key: _number(reference.get(key)) for key in FIGURES}
  return {
      "reference": REFERENCE,
      **figures,
      **{f"{REFERENCE}_{key}": ref[key] for key in ("acc_forget", "acc_test", "mia_acc")},
      "acc_forget_gap": _gap(figures["acc_forget"], ref["acc_forget"], absolute=True),
      "mia_acc_gap": _gap(figures["mia_acc"], ref["mia_acc"], absolute=True),
      "acc_test_gap": _gap(figures["acc_test"], ref["acc_test"], absolute=False),
  }


def _request(data) -> dict[str, Any]:
  """The forget request without any id in clear: explicit ids as a count and digest."""
  request = data.request
  forgotten_ids = data.host["forget"].ids
  return {
      "kind": request.kind,
      "classes": [int(c) for c in request.classes],
      "class_names": [str(data.dataset.class_names[c]) for c in request.classes],
      "fraction": float(request.fraction),
      "explicit_ids": len(request.ids),
      "explicit_ids_sha256": ids_digest(request.ids) if request.ids else None,
      "forgotten": int(len(forgotten_ids)),
      "forgotten_ids_sha256": ids_digest(forgotten_ids),
  }


def _hyperparameters(config, name: str, operator: str) -> dict[str, Any]:
  """The operator's config as it ran: its defaults, `config.unlearn.<operator>`,
  and the original's training and augmentation recipe (`Operator.make_config`)."""
  try:
    found = unlearn.get(operator)
  except KeyError as e:
    raise KeyError(f"audit: model {name!r} names no registered operator ({operator!r}); "
                   "build_record's operator_of maps such a model to its operator") from e
  return found.make_config(config.unlearn.get(operator), config.train, config.augment).to_dict()


def content_digest(record: Mapping[str, Any]) -> str:
  """SHA-256 (hex) of `record`'s canonical JSON (sorted keys, no spaces), less `DIGEST_KEY`."""
  content = {k: v for k, v in record.items() if k != DIGEST_KEY}
  text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                    allow_nan=False)
  return hashlib.sha256(text.encode()).hexdigest()


def build_record(config, data, models: Mapping[str, Any], results, *, started_at: str,
                 original_name: str = "original", made_from: Mapping[str, str] | None = None,
                 operator_of: Mapping[str, str] | None = None) -> dict[str, Any]:
  """The audit record of a finished run (see the module docstring).

  Args:
    config: the run's config.
    data: its `ExperimentData` (request, forget split, fingerprint).
    models: name -> variables of every model of the run: the originals
      (trained on everything) and each model unlearned from one of them.
    results: name -> {metric: value}, from `evaluate.suite.evaluate_models`.
    started_at: when the run started (`now()`).
    original_name: the original every unlearned model is made from, unless
      `made_from` names another.
    made_from: unlearned model -> its original, where that is not
      `original_name` (SISA's ensemble after deletion -> the ensemble before).
    operator_of: model -> the registered operator that made it, where its name
      is not the operator's (retrain from another seed -> "retrain").

  Returns:
    A JSON-ready dict whose `record_sha256` is `content_digest` of the rest.
  """
  made_from, operator_of = dict(made_from or {}), dict(operator_of or {})
  bases = [name for name in models if name == original_name or name in made_from.values()]
  digests = {name: files.tree_digest(models[name]) for name in bases}
  request = _request(data)
  deletions = []
  for name, variables in models.items():
    if name in bases:
      continue
    base, operator = made_from.get(name, original_name), operator_of.get(name, name)
    deletions.append({
        "model": name,
        "store": f"models/{name}",
        "operator": operator,
        "hyperparameters": _hyperparameters(config, name, operator),
        "request": request,
        "forgotten": request["forgotten"],
        "made_from": base,
        "before": digests[base],
        "after": files.tree_digest(variables),
        "verification": verification(results, name),
    })
  record = {
      "format": FORMAT,
      "started_at": started_at,
      "written_at": now(),
      "seed": int(config.seed),
      "data": {"name": str(config.data.name), "digest": data.fingerprint},
      "originals": [{"model": name, "store": f"models/{name}", "tree_digest": digests[name]}
                    for name in bases],
      "deletions": deletions,
      "software": software_versions(),
  }
  record = json.loads(json.dumps(record))  # as it will read back: tuples as lists
  record[DIGEST_KEY] = content_digest(record)
  return record


def write_record(workdir: str, record: Mapping[str, Any]) -> str:
  """Writes `record` to `workdir/audit.json` atomically; returns the path."""
  path = os.path.join(workdir, AUDIT_NAME)
  files.write_json(path, record, indent=1, sort_keys=True, allow_nan=False)
  return path


def read_record(workdir: str) -> dict[str, Any]:
  """The record in `workdir/audit.json`.

  Raises:
    OSError: the file is absent or unreadable.
    ValueError: naming the file, when it is not JSON or not a record.
  """
  path = os.path.join(workdir, AUDIT_NAME)
  record = files.read_json(path)
  if not isinstance(record, dict) or not isinstance(record.get("deletions"), list):
    raise ValueError(f"{path}: not an audit record (expected an object with 'deletions')")
  return record


def check_record(record: Mapping[str, Any]) -> list[str]:
  """The problems of the record's own content: [] when its digest matches."""
  problems = []
  if record.get("format") != FORMAT:
    problems.append(f"format is {record.get('format')!r}, expected {FORMAT!r}")
  expected = record.get(DIGEST_KEY)
  try:
    actual = content_digest(record)
  except ValueError as e:  # NaN or inf written in by hand
    actual = f"not computable ({e})"
  if actual != expected:
    problems.append(f"{DIGEST_KEY} is {str(expected)[:16]}..., but the content's is "
                    f"{actual[:16]}...: the record was edited or damaged after it was written")
  return problems


def verify_workdir(workdir: str) -> list[tuple[str, str | None]]:
  """Checks `workdir/audit.json` and every model it lists against the model store.

  The record's own digest (`check_record`); then each stored model is
  restored (`ModelStore.read`, which checks the arrays against the store's
  checksum) and its `tree_digest` compared with the record's: each
  original's with its `tree_digest` and with the `before` of every entry
  made from it, each unlearned model's with its `after`. A model changed on disk fails the store's
  checksum; one changed through the store (record rewritten to match) fails
  the audit's digest.

  Returns:
    (subject, problem or None) per subject, in order: "audit.json", each
    original, then each deletion's model.
  """
  try:
    record = read_record(workdir)
  except (OSError, ValueError) as e:
    return [(AUDIT_NAME, files.describe_error(e))]
  problems = check_record(record)
  lines = [(AUDIT_NAME, "; ".join(problems) or None)]
  store = ModelStore(workdir)
  digests: dict[str, str | Exception] = {}

  def digest_of(name: str) -> str | Exception:
    if name not in digests:
      try:
        digests[name] = files.tree_digest(store.read(name)[0])
      except DamagedModelError as e:
        digests[name] = e
    return digests[name]

  def compare(name: str, field: str, recorded) -> str | None:
    actual = digest_of(name)
    if isinstance(actual, Exception):
      return f"{field}: {actual}"
    if actual != recorded:
      return (f"{field}: tree_digest of models/{name} is {actual[:16]}..., the record's is "
              f"{str(recorded)[:16]}...: the model is not the one audited")
    return None

  for original in record.get("originals") or []:
    name = str(original.get("model"))
    lines.append((name, compare(name, "tree_digest", original.get("tree_digest"))))
  for entry in record["deletions"]:
    name = str(entry.get("model"))
    problem = compare(name, "after", entry.get("after"))
    if problem is None:
      problem = compare(str(entry.get("made_from")), "before", entry.get("before"))
    lines.append((name, problem))
  return lines
