"""Every shipped config's `:local` variant runs end to end as shipped (tests/shipped_configs.py).

Split over two files, so that pytest-xdist's workers (a file each) share the
four runs: dermamnist's (the longest, six operators at 28x28 decoding) runs in
test_shipped_config_dermamnist.py.
"""

import pytest

import shipped_configs


@pytest.mark.parametrize("name", ["ham10000", "hmnist", "mnist"])
def test_local_variant_runs_every_listed_operator(name, tmp_path):
  shipped_configs.run_local_variant(name, tmp_path)
