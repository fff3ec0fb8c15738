"""pyproject.toml in the current form: set-up prints no setuptools deprecation box (issue 16 item 14)."""

from __future__ import annotations

import os
import warnings

import pytest

from tests.cli.cli_process import ROOT


def test_pyproject_applies_without_a_setuptools_warning():
    pytest.importorskip("setuptools")
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    cwd = os.getcwd()
    os.chdir(ROOT)  # the readme and package paths are relative to the project
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the license box is a SetuptoolsDeprecationWarning
            dist = apply_configuration(Distribution(), "pyproject.toml")
    finally:
        os.chdir(cwd)
    assert dist.metadata.license_expression == "Apache-2.0"
