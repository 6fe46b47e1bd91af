"""pucli: compress an image classifier with a tiny labeled subset and a large unlabeled pool.

Implements Xu et al., "Positive-Unlabeled Compression on the Cloud", NeurIPS 2019
(https://arxiv.org/abs/1909.09757): a PU selector picks the unlabeled images that belong to the
teacher's task, and robust knowledge distillation trains a smaller student on them.

Importing :mod:`pucli` registers pucli's models (``lenet5``, ``lenet5_half``) in timm's model
registry, so ``timm.create_model("lenet5")`` works afterwards. Importing torch and timm takes a
couple of seconds, so the registration waits until timm itself is imported (right away if it
already is): ``pucli --help`` stays instant and nothing changes for the user.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

__version__ = "0.1.0"

__all__ = ["__version__"]


def _register_models() -> None:
    from pucli import models  # noqa: F401  (registers through timm.models.register_model)


class _RegisterAfterTimmImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps timm's loader so pucli's models register once timm is loaded."""

    def find_spec(self, fullname, path, target=None):  # noqa: ANN001 - importlib protocol
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):  # noqa: ANN001, ANN202
            exec_module(module)
            _register_models()

        spec.loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


if "timm" in sys.modules:
    _register_models()
elif not any(isinstance(finder, _RegisterAfterTimmImport) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterTimmImport())
