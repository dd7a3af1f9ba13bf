r"""Checks a finished run's deletions: its audit record against the stored models.

    python -m launch.verify /tmp/mnist

Reads WORKDIR/audit.json (written by every run, `hamforget.audit`), checks
its self-digest, restores every model it lists from WORKDIR/models (each
checked against the store's checksum) and compares each model's tree digest
with the record's: the unlearned model's with `after`, the original's with
`before`. Prints one line per subject (OK, or what differs) and exits 0 when
all agree, 1 otherwise. Needs neither the config nor the data.
"""

import sys

from absl import app, logging


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: python -m launch.verify WORKDIR")
  logging.set_verbosity(logging.WARNING)  # orbax logs every file it reads at INFO
  from hamforget import audit  # pylint: disable=g-import-not-at-top  (after absl parses flags)
  workdir = argv[1]
  lines = audit.verify_workdir(workdir)
  for subject, problem in lines:
    print(f"{subject}: {'OK' if problem is None else 'FAILED: ' + problem}")
  failed = [subject for subject, problem in lines if problem is not None]
  if failed:
    print(f"{workdir}: {len(failed)} of {len(lines)} failed: {', '.join(failed)}",
          file=sys.stderr)
    sys.exit(1)
  try:
    digest = audit.read_record(workdir)[audit.DIGEST_KEY]
  except (OSError, ValueError, KeyError):
    digest = "?"
  print(f"{workdir}: all {len(lines)} agree (record_sha256 {digest})", file=sys.stderr)


if __name__ == "__main__":
  app.run(main)
