"""rsmi-nn: real-space mutual-information coarse-graining of neural networks."""

__version__ = "0.1.0"

__all__ = ["__version__"]
