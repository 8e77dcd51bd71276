"""The package version, in a leaf module that imports nothing (the builder records it)."""

__version__ = "0.1.0"
