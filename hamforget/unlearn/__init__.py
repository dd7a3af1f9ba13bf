"""Unlearning operators. Importing this package registers every operator.

To add one: write `hamforget/unlearn/my_method.py` with a function decorated by
`@base.register("my_method", needs={...}, defaults={...})` and add its module
name to `_OPERATOR_MODULES` below.
"""

import importlib

from hamforget.unlearn.base import Access, Operator, get, make_access, names, register

_OPERATOR_MODULES = (
    "retrain", "finetune",
    "neggrad_plus", "random_label", "salun", "l1_sparse", "bad_teacher", "scrub",
    "unsir", "emmn", "gkt",
)

for _module in _OPERATOR_MODULES:
  importlib.import_module(f"hamforget.unlearn.{_module}")

__all__ = ["Access", "Operator", "get", "make_access", "names", "register"]
