"""Expotion: facial expression and motion control for multimodal music generation."""

__version__ = "0.1.0"
