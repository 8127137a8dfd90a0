"""Reproducible studies: 2D Ising model, Gaussian fields on graphs, real models."""
