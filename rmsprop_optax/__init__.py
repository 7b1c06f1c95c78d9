"""rmsprop-optax: RMSProp for JAX and Optax, every framework's flavour reproduced exactly."""

from importlib.metadata import PackageNotFoundError, version

from rmsprop_optax import presets
from rmsprop_optax._alias import rmsprop
from rmsprop_optax._state import RMSPropState
from rmsprop_optax._transform import scale_by_rms

try:
  __version__ = version("rmsprop-optax")
except PackageNotFoundError:  # running from a source tree that was not installed
  __version__ = "0.0.0"

__all__ = ["RMSPropState", "presets", "rmsprop", "scale_by_rms", "__version__"]
