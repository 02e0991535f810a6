"""Test setup: 8 fake CPU devices, forced before JAX initialises, so sharding tests run anywhere."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must come after the flags)

jax.config.update("jax_platforms", "cpu")
