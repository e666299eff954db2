"""zephyr-local: Zephyr-7B on a laptop with MLX."""

from zephyr_local import backend as _backend

__version__ = "0.1.0"

# Must run before anything imports mlx: see backend.preload_blas.
_backend.preload_blas()
