"""Segmentation networks: definitions, weight conversion, the registry of names."""
