"""Test configuration: loud dtype and rank promotion, Keras on JAX, float32 throughout."""

import os

# Keras reads its backend once, at import: choose JAX before any test imports it.
os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _strict_promotion():
  """Silent upcasts and broadcasts fail loudly inside our code.

  Framework references (Keras, which relies on standard promotion) run under
  `helpers.standard_promotion()`.
  """
  with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
    yield
