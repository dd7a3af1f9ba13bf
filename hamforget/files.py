"""Files that are whole or absent, and digests that tell a damaged one from a good one.

Every file the project writes goes through `atomic_open` (or `write_text`,
`write_json`): the bytes go to a temporary file in the same folder, which then
replaces the target in one `os.replace`. A run killed mid-write leaves the old
file or none, never half of one. `tree_digest` is the SHA-256 of a pytree's
arrays, recorded beside stored models and checkpoints and compared on restore.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from typing import IO, Any, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
  """Opens a temporary file beside `path` that replaces `path` when the block ends.

  Args:
    path: the file to write.
    mode: "w" (text) or "wb" (binary).
    **kwargs: passed to `open` (e.g. `newline=""` for CSV).

  Yields:
    The open temporary file. If the block raises, it is deleted and `path`
    is left as it was.
  """
  path = os.fspath(path)
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_open mode {mode!r}: expected 'w' or 'wb'")
  # Same folder: os.replace is atomic only within one file system.
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                             prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, mode, **kwargs) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())  # the bytes are on disk before the name points at them
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes `text` to `path` atomically."""
  with atomic_open(path, "w") as f:
    f.write(text)


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
  """Writes `arrays` as an uncompressed `.npz` to `path` atomically (no object arrays)."""
  with atomic_open(path, "wb") as f:
    np.savez(f, **arrays)


def write_json(path: str | os.PathLike, value: Any, **kwargs) -> None:
  """Writes `value` as JSON to `path` atomically (`kwargs` go to `json.dump`)."""
  with atomic_open(path, "w") as f:
    json.dump(value, f, **kwargs)


def read_json(path: str | os.PathLike) -> Any:
  """The JSON value in `path`.

  Raises:
    ValueError: naming `path`, when it is empty or not JSON (a damaged file).
  """
  path = os.fspath(path)
  with open(path, "rb") as f:
    raw = f.read()
  try:
    return json.loads(raw)
  except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
    raise ValueError(f"{path}: not valid JSON ({len(raw)} bytes): {e}") from e


def describe_error(e: BaseException, limit: int = 300) -> str:
  """`Type: message` on one line, cut to `limit` characters (tensorstore's
  messages run to pages and carry a pretty-printed spec over many lines: one
  line keeps a report of one problem per line, `launch.verify`'s, readable)."""
  text = " ".join(f"{type(e).__name__}: {e}".split())
  return text if len(text) <= limit else text[:limit] + " ..."


def _host_array(x) -> np.ndarray:
  """`x` on the host; for a replicated array of several hosts, this host's copy."""
  import jax  # pylint: disable=g-import-not-at-top  (config checks import this module without JAX)
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)  # typed keys have no bytes of their own
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if not x.is_fully_replicated:
      raise ValueError("tree_digest needs replicated arrays on a multi-host run; got "
                       f"sharding {x.sharding}")
    x = x.addressable_data(0)
  return np.asarray(jax.device_get(x))


def tree_digest(tree) -> str:
  """The SHA-256 (hex) of a pytree of arrays: each leaf's path, dtype, shape and bytes.

  Equal for equal trees wherever they live (device, host, restored from disk);
  one flipped bit in any leaf changes it.
  """
  import jax  # pylint: disable=g-import-not-at-top
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    array = np.ascontiguousarray(_host_array(leaf))
    digest.update(f"{jax.tree_util.keystr(path)}\0{array.dtype.str}\0{array.shape}\n".encode())
    digest.update(array.data)
  return digest.hexdigest()
