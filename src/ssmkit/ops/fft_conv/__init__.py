"""Placeholder: being written."""


def fft_conv(*args, **kwargs):
    raise NotImplementedError("ssmkit.ops.fft_conv is not implemented yet")
