"""The CUDA kernels' host build on the products path only (cuda/products.cuh, lgd.kernels.cuda_products):
for the tests, as :mod:`lgd.backends._cuda_host` is for the fused kernel."""

from ._cuda_host import ProductsRunner as Runner
from ._cuda_host import available

__all__ = ["Runner", "available"]
