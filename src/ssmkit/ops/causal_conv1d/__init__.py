"""Placeholder: being written."""


def causal_conv1d(*args, **kwargs):
    raise NotImplementedError("ssmkit.ops.causal_conv1d is not implemented yet")
