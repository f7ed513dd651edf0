"""gradsweep: Hydra-configured sweeps that measure how gradients flow through neural networks."""

__version__ = "0.1.0"
