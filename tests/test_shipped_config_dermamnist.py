"""configs/dermamnist.py:local runs end to end as shipped (tests/shipped_configs.py)."""

import shipped_configs


def test_local_variant_runs_every_listed_operator(tmp_path):
  shipped_configs.run_local_variant("dermamnist", tmp_path)


def test_every_shipped_config_has_a_layout_and_a_test():
  import pathlib  # pylint: disable=import-outside-toplevel
  import configs  # pylint: disable=import-outside-toplevel
  import test_shipped_configs  # pylint: disable=import-outside-toplevel
  shipped = {path.stem for path in pathlib.Path(configs.__file__).parent.glob("*.py")} - {
      "__init__", "common", "sweeps"}
  assert set(shipped_configs.LAYOUTS) == shipped  # a new config needs a fixture of its layout
  tested = {name for mark in
            test_shipped_configs.test_local_variant_runs_every_listed_operator.pytestmark
            if mark.name == "parametrize" for name in mark.args[1]}
  assert tested | {"dermamnist"} == shipped
