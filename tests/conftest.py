"""Test configuration: loud dtype and rank promotion, Keras on JAX, eight CPU devices."""

import os

# Keras reads its backend once, at import: choose JAX before any test imports it.
os.environ.setdefault("KERAS_BACKEND", "jax")
# Eight CPU devices for the sharding tests. XLA reads this when JAX creates its CPU client,
# at the first computation, so it must be set before any test runs JAX code.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  ).strip()

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
