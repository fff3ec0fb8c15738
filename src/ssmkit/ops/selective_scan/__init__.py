"""Placeholder: being written."""


def selective_scan(*args, **kwargs):
    raise NotImplementedError("ssmkit.ops.selective_scan is not implemented yet")
