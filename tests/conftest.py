"""Session-wide test settings.

XLA:CPU's backend optimisations roughly double the compile time of the
small programs the tests build, and compile time dominates this suite on a
2-core machine; the tests compare runs made under the same settings, so
they keep all their power without them. Set before JAX creates its backend.
"""

import os

_FLAG = "--xla_backend_optimization_level=0"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
