"""Triton's CPU interpreter for the test run: TRITON_INTERPRET=1, set only when no GPU is present.

Triton reads TRITON_INTERPRET when ``@triton.jit`` decorates a kernel, i.e. when ``minimc.kernel``
is imported, so tests/conftest.py calls this first, before anything imports minimc:

    from _triton_env import use_interpreter_without_gpu; use_interpreter_without_gpu()

With a GPU the variable is left as it is and the kernels compile for the GPU.
"""
import os
import sys


def use_interpreter_without_gpu(environ=None, cuda_available=None):
    """Set ``TRITON_INTERPRET=1`` in ``environ`` (default ``os.environ``) when no GPU is present.

    Returns True when the interpreter is requested afterwards. Raises RuntimeError when
    ``minimc.kernel`` was already imported without the interpreter (too late: its kernel is
    already decorated for a GPU that is not there)."""
    environ = os.environ if environ is None else environ
    if cuda_available is None:
        import torch
        cuda_available = torch.cuda.is_available()
    if not cuda_available:
        environ["TRITON_INTERPRET"] = "1"
        kernel = sys.modules.get("minimc.kernel")
        if kernel is not None and not kernel.INTERPRET:
            raise RuntimeError("minimc was imported before TRITON_INTERPRET=1 was set: call "
                               "use_interpreter_without_gpu() at the top of tests/conftest.py")
    return environ.get("TRITON_INTERPRET") == "1"
