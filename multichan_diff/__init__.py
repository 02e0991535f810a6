"""multichan_diff: controllable diffusion for multi-channel biological data (JAX / Flax NNX)."""

__version__ = "0.1.0"
