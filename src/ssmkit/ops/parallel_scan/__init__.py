"""Placeholder: being written."""


def parallel_scan(*args, **kwargs):
    raise NotImplementedError("ssmkit.ops.parallel_scan is not implemented yet")
