"""Pure functions on tensors, no nn.Module: HiPPO matrices, NPLR/DPLR forms, discretization,
SSM convolution kernels."""

from ssmkit._lazy import lazy_exports

_EXPORTS = {
    "hippo": "ssmkit.math.hippo",
    "discretize": "ssmkit.math.discretize",
    "kernels": "ssmkit.math.kernels",
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
