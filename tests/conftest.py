"""Shared fixtures. Tests run on CPU with tiny models and 8x8 images."""

import os

# Several virtual CPU devices for the sharding tests; must precede JAX's first use.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
