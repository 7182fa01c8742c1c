"""The package version (one home: setuptools reads it for the build)."""

__version__ = "0.1.0"
