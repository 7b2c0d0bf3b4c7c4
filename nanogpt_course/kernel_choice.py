"""A Triton kernel beside its PyTorch reference: which of the two runs.

The fused loss (fused_loss.py) and the fused MLP (fused_mlp.py) each have a Triton kernel,
in a module of its own that imports Triton, and a readable PyTorch reference of the same
contract. :class:`KernelChoice` holds what the two share:

- the kernel module is imported on first use, and is None where Triton is not installed
  (the library imports on machines without Triton);
- an environment variable picks the backend: ``auto`` (the default), ``triton`` or
  ``torch``;
- under ``auto`` the kernel runs for CUDA tensors where Triton is installed; if it fails
  (e.g. Triton cannot compile for this GPU) the reference runs instead, from then on, after
  one warning.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings

import torch

BACKENDS = ("auto", "triton", "torch")


@functools.cache
def _import_or_none(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


class KernelChoice:
    """``KernelChoice("the fused loss", "nanogpt_course.fused_loss_kernel", ENV)``."""

    def __init__(self, what: str, module: str, backend_env: str):
        self.what, self.module_name, self.backend_env = what, module, backend_env
        self.failure: list[str] = []  # why the kernel could not run, once it could not

    def module(self):
        """The kernel module, or None where Triton is not installed."""
        return _import_or_none(self.module_name)

    def available(self) -> bool:
        return self.module() is not None

    def require(self):
        """The kernel module; a clear error where Triton is not installed."""
        module = self.module()
        if module is None:
            raise RuntimeError(f"{self.what}'s Triton kernel needs Triton (pip install triton), "
                               f"or set {self.backend_env}=torch for the PyTorch reference")
        return module

    def backend(self, backend: str | None = None) -> str:
        """``backend``, else ``$backend_env``, else ``"auto"``; refuses other names."""
        backend = backend or os.environ.get(self.backend_env) or "auto"
        if backend not in BACKENDS:
            raise ValueError(f"{self.backend_env}={backend!r}: choose one of {BACKENDS}")
        return backend

    def applies(self, tensor: torch.Tensor) -> bool:
        """Whether ``auto`` runs the kernel on ``tensor``."""
        return tensor.is_cuda and self.available() and not self.failure

    def run(self, kernel, reference, tensor: torch.Tensor, backend: str | None = None):
        """``kernel()`` or ``reference()`` (no arguments: bind them first), as
        ``backend`` (or the environment) and ``tensor``'s device say."""
        backend = self.backend(backend)
        if backend == "triton":
            return kernel()
        if backend == "auto" and self.applies(tensor):
            try:
                return kernel()
            except Exception as err:  # e.g. Triton cannot compile for this GPU
                self.failure.append(f"{type(err).__name__}: {err}")
                warnings.warn(f"{self.what}'s Triton kernel failed ({self.failure[0][:300]}); "
                              "using the PyTorch reference from now on", stacklevel=3)
        return reference()
