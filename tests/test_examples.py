"""The notebooks' helpers in `rmsprop_optax._examples` report what they claim to."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from rmsprop_optax import _examples as ex


def rising(count):
  return 1.0 - 0.1 / (1.0 + jnp.asarray(count, jnp.float32) / 10.0)


@pytest.mark.parametrize("decay", [0.99, rising], ids=["constant", "schedule"])
@pytest.mark.parametrize("bias_correction", [False, True])
def test_rms_trace_returns_the_average_each_step_divides_by(decay, bias_correction):
  grads = np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32)

  steps, averages = ex.rms_trace(grads, decay=decay, eps=1e-8, bias_correction=bias_correction)

  v, product = np.zeros(3), 1.0
  for t, g in enumerate(grads.astype(np.float64)):
    rho = float(decay(t)) if callable(decay) else decay  # the count before the update
    v = rho * v + (1 - rho) * g**2
    product *= rho  # of the decays so far
    v_hat = v / (1 - product) if bias_correction else v
    np.testing.assert_allclose(averages[t], v_hat, rtol=2e-5, err_msg=f"step {t + 1}")
    np.testing.assert_allclose(steps[t], g / np.sqrt(v_hat + 1e-8), rtol=2e-5, err_msg=f"step {t + 1}")
