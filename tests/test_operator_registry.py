"""The operator registry and the catalog: operators are found by module name,
their defaults are read from source without JAX, and both views agree."""

import importlib
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from hamforget import unlearn
from hamforget.unlearn import base, catalog, common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_catalog_and_registry_agree():
  """Same operators, same order, same defaults; each module's DEFAULTS literal
  is what it registered."""
  assert catalog.names() == unlearn.names()
  defaults = catalog.defaults()
  for name in unlearn.names():
    op = unlearn.get(name)
    assert op.defaults == defaults[name], name
    module = sys.modules[op.fn.__module__]
    assert module.__name__ == f"hamforget.unlearn.{name}"
    assert module.DEFAULTS == op.defaults, name
  assert catalog.request_kinds() == {name: unlearn.get(name).request_kinds
                                     for name in unlearn.names()}


# Every shipped config and variant (configs/<name>.py:<arg>).
SHIPPED = [("mnist", ""), ("mnist", "local"), ("mnist", "challenge"), ("mnist", "challenge,local"),
           ("ham10000", ""), ("ham10000", "local"), ("hmnist", ""), ("hmnist", "local"),
           ("dermamnist", ""), ("dermamnist", "local")]


@pytest.mark.parametrize("name, arg", SHIPPED)
def test_every_shipped_config_lists_operators_that_serve_its_request(name, arg):
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  catalog.check_methods(config)  # raises if one cannot
  assert catalog.method_names(config), "a shipped config runs some operator"


def test_an_operator_that_cannot_serve_the_request_is_refused_by_name():
  from configs import ham10000  # pylint: disable=import-outside-toplevel
  config = ham10000.get_config("local")  # forgets a random 10% of lesions
  config.unlearn.methods = ("finetune,unsir",)
  with pytest.raises(ValueError, match="'unsir' cannot serve forget.kind='groups'.*classes only"):
    catalog.check_methods(config)
  config.unlearn.methods = ("finetune", "scurb")
  with pytest.raises(ValueError, match="'scurb'.*did you mean 'scrub'"):
    catalog.check_methods(config)


def test_the_launcher_refuses_such_a_config_before_any_work(tmp_path):
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, "-m", "launch.main", "--config=configs/ham10000.py:local",
       "--config.unlearn.methods=finetune,unsir", f"--workdir={workdir}",
       f"--config.data.root={tmp_path / 'no_data_needed'}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert "'unsir' cannot serve forget.kind='groups'" in result.stderr
  assert not workdir.exists()  # nothing was started


def test_every_operator_module_is_found():
  """Every module of the package but the helpers is an operator."""
  files = {f[:-3] for f in os.listdir(os.path.dirname(unlearn.__file__))
           if f.endswith(".py") and not f.startswith("_")}
  assert set(unlearn.names()) == files - unlearn.NOT_OPERATORS
  assert {"retrain", "finetune", "gkt"} <= set(unlearn.names())


def test_configs_and_catalog_import_no_jax():
  """Configs are plain data: parsing one imports neither JAX nor an operator."""
  code = textwrap.dedent("""
      import sys
      import configs.dermamnist, configs.ham10000, configs.hmnist, configs.mnist
      from hamforget import unlearn
      from hamforget.unlearn import catalog
      config = configs.mnist.get_config("local")
      assert set(catalog.names()) <= set(config.unlearn), sorted(config.unlearn)
      heavy = [m for m in sys.modules if m.split(".")[0] in ("jax", "flax", "optax")
               or m.startswith("hamforget.unlearn.") and m != "hamforget.unlearn.catalog"]
      assert not heavy, heavy
      """)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr


def test_config_sections_are_the_catalog_defaults():
  from configs import common as config_common  # pylint: disable=import-outside-toplevel
  config = config_common.base_config()
  for name, defaults in catalog.defaults().items():
    assert config.unlearn[name].to_dict() == defaults, name


def _write(folder, name, text):
  path = folder / f"{name}.py"
  path.write_text(textwrap.dedent(text))
  return str(path)


def test_catalog_skips_helpers_and_reads_literals(tmp_path):
  for helper in ("base", "common", "catalog", "_private"):
    _write(tmp_path, helper, "x = 1\n")
  _write(tmp_path, "good", """
      import jax  # never imported by the catalog
      DEFAULTS = {"rate": 1e-3, "steps": 5, "space": "pixels", "on": True, "shape": (1, 2)}
      """)
  assert catalog.defaults([str(tmp_path)]) == {
      "good": {"rate": 1e-3, "steps": 5, "space": "pixels", "on": True, "shape": (1, 2)}}


@pytest.mark.parametrize("source, message", [
    ("X = {}\n", "needs a module-level literal `DEFAULTS"),
    ("from x import OTHER\nDEFAULTS = {**OTHER, 'a': 1}\n", "must be a plain literal"),
    ("DEFAULTS = dict(a=1)\n", "must be a plain literal"),
    ("DEFAULTS = [1, 2]\n", "must be a dict with string keys"),
    ("DEFAULTS = {}\nDEFAULTS = {'a': 1}\n", "assigned 2 times"),
])
def test_catalog_errors_name_the_file(tmp_path, source, message):
  path = _write(tmp_path, "broken_op", source)
  with pytest.raises(ValueError, match=message) as error:
    catalog.defaults([str(tmp_path)])
  assert path in str(error.value)


def test_registered_name_must_be_the_module_name(tmp_path, monkeypatch):
  path = _write(tmp_path, "misnamed", """
      from hamforget.unlearn import base
      DEFAULTS = {}

      @base.register("another_name", needs=set(), defaults=DEFAULTS)
      def another_name(model, variables, access, request, config, rng):
        return variables, {}
      """)
  base.load_operators()  # every shipped operator; the next call finds the new file alone
  monkeypatch.setattr(unlearn, "__path__", [*unlearn.__path__, str(tmp_path)])
  monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
  try:
    with pytest.raises(ImportError, match="named after its module") as error:
      base.load_operators()
    assert path in str(error.value) and "another_name" in str(error.value)
  finally:
    sys.modules.pop("hamforget.unlearn.misnamed", None)


def test_kl_divergences_are_the_distillation_kl():
  """Both of common's KLs are sum p_T log(p_T / p_S) at temperature T (the
  former `bad_teacher.kl_divergence`, xlogy form), up to float rounding."""
  rng = np.random.default_rng(0)
  teacher, student = (rng.normal(0, 3, (16, 10)).astype(np.float32) for _ in range(2))
  for temperature in (1.0, 4.0):
    p = jax.nn.softmax(teacher / temperature)
    expected = np.sum(jax.scipy.special.xlogy(p, p)
                      - p * jax.nn.log_softmax(student / temperature), axis=-1)
    np.testing.assert_allclose(common.kl_divergence(p, student, temperature), expected,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(common.kl_divergence_of_logits(teacher, student, temperature),
                               expected, rtol=1e-5, atol=1e-6)


def test_kl_of_logits_is_finite_where_a_teacher_probability_underflows():
  teacher = np.array([[0.0, 200.0, -200.0]], np.float32)  # p_T = (0, 1, 0) in float32
  student = np.zeros((1, 3), np.float32)
  assert np.isfinite(common.kl_divergence(jax.nn.softmax(teacher), student, 1.0)).all()
  value, grad = jax.value_and_grad(
      lambda t: common.kl_divergence_of_logits(t, student, 1.0).sum())(teacher)
  assert np.isfinite(value) and np.all(np.isfinite(grad))
