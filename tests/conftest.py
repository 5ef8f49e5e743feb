"""Shared pytest fixtures."""

import os

from data_pipeline.tf_utils import configure_tensorflow_environment  # noqa: E402

configure_tensorflow_environment()

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Runs one test with float64 enabled in JAX, then restores float32 defaults."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)
