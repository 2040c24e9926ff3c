"""Packaging for lgd. The top-level kernels/ folder installs as lgd.kernels, never as `kernels`."""

from setuptools import find_packages, setup

EXTRAS = {
    # The numba kernels use numba internals (compile_internal, Flags, the cache's index file): bounded to
    # the minor version they are tested with (kernels/numba_cpu/compiler.py names a missing internal).
    "numba": ["numba>=0.68,<0.69", "scipy>=1.10", "threadpoolctl>=3.1"],
    "cuda12": ["cupy-cuda12x>=13"],
    "cuda13": ["cupy-cuda13x>=14"],
    "plot": ["matplotlib>=3.7"],
    "data": ["scikit-learn>=1.3"],
    "progress": ["tqdm>=4.60"],
    "analysis": ["scipy>=1.10"],
    # Sweeps over a Dask cluster, results as xarray datasets streamed into zarr stores (lgd.distributed).
    "distributed": ["dask[distributed]>=2024.1", "xarray>=2024.1", "zarr>=2.18"],
    "bench": ["pytest-benchmark>=4", "torch==2.13.0", "jax>=0.4.30", "threadpoolctl>=3"],
    # NVRTC and the CUDA headers from PyPI compile the CUDA sources without a GPU. Pinned to the 13.0
    # line: newer NVRTC emits PTX that the lent GPU machines' driver (CUDA 13.0) rejects.
    "nvrtc": ["cupy-cuda13x>=14", "nvidia-cuda-nvrtc==13.0.*", "nvidia-cuda-runtime==13.0.*",
              "nvidia-cuda-cccl==13.0.*"],
}
EXTRAS["test"] = ["pytest>=7", "hypothesis>=6", "pytest-benchmark>=4", "pandas>=1.5", "mpmath>=1.3",
                  *EXTRAS["nvrtc"]]
EXTRAS["all"] = sorted({req for name in ("numba", "plot", "data", "progress", "analysis", "distributed")
                       for req in EXTRAS[name]})

setup(
    name="lgd",
    version="0.1.0",
    description="Fast, exact large-stepsize gradient descent on two-layer networks (numpy, Numba, CuPy)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    # Every package under lgd/ and kernels/ (a list by hand once left lgd.dynamics out of the wheel).
    packages=["lgd", *(f"lgd.{name}" for name in find_packages("lgd")),
              "lgd.kernels", *(f"lgd.kernels.{name}" for name in find_packages("kernels"))],
    package_dir={"lgd.kernels": "kernels"},
    package_data={"lgd.kernels": ["cuda/*.cu", "cuda/*.cuh", "cuda/*.h", "cuda/*.cpp"]},
    install_requires=["numpy>=1.24"],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["lgd = lgd.cli:main"]},
)
