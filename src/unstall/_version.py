"""The version, in a leaf module so that any part may read it without the package root."""

__version__ = "0.1.0"
