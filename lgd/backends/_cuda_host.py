"""The CUDA kernels on the CPU: the cupy backend's runner on the host build of kernels/cuda/lgd.cu.

For the tests, not for users (it is not in ``lgd.backends.NAMES``): the same glue and the same kernel
source as the GPU, with numpy arrays and g++ (``lgd.kernels.cuda_host``), so that every case of the
test suite checks the GPU code against the numpy oracle on a machine without a GPU.
"""

from __future__ import annotations

from ._cupy import Runner as _GpuRunner


def available() -> tuple[bool, str]:
    from ..kernels import cuda_host

    if cuda_host.compiler() is None:
        return False, "no C++ compiler (g++) for the host build of the CUDA kernels"
    return True, "the CUDA kernels built for the host with g++"


class Runner(_GpuRunner):
    """The cupy backend's runner with the host engine (numpy arrays, ctypes)."""

    name = "cuda-host"

    def _engine(self):
        from ..kernels import cuda_host

        return cuda_host.HostEngine()


class ProductsRunner(Runner):
    """The host runner on the products path only (the path a GPU takes for large problems), so that the
    oracle cases of the test suite run it at the test suites' small sizes."""

    name = "cuda-host-products"
    requested_path = "products"
