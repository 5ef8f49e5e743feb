"""norton-jax: Norton (NOise Robust Temporal Optimal traNsport, ICLR 2024) in JAX/Flax."""

__version__ = "0.1.0"
