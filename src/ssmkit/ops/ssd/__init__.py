"""Placeholder: being written."""


def ssd(*args, **kwargs):
    raise NotImplementedError("ssmkit.ops.ssd is not implemented yet")
