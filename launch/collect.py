r"""Gathers the finished runs of one or more sweep roots into one table.

    python -m launch.collect /tmp/grid
    python -m launch.collect runs/grid /mnt/host2/runs/grid --out=runs/grid

Per model and setting (the swept keys other than seed): the mean and the
95% t-interval over seeds of the suite's metrics (`hamforget.collect`).
Writes grid_results.csv, grid_results.md, grid_long.csv (every value of
every run, long format) and the plots into --out (default: the first root),
and prints the markdown table. Roots from several machines merge; a run
found in two counts once.
"""

import sys

from absl import app, flags, logging

_OUT = flags.DEFINE_string("out", None, "Folder of the table and plots; default: the first root.")


def main(argv):
  roots = argv[1:]
  if not roots:
    raise app.UsageError("usage: python -m launch.collect ROOT [ROOT ...] [--out=DIR]")
  logging.set_verbosity(logging.WARNING)
  from hamforget import collect  # pylint: disable=g-import-not-at-top
  try:
    table, text = collect.write(roots, _OUT.value)
  except ValueError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)
  print(text)
  print(f"\n{len(table)} rows; written to {_OUT.value or roots[0]}/grid_results.{{csv,md}}",
        file=sys.stderr)


if __name__ == "__main__":
  app.run(main)
