"""The package version, in a module of its own so that anything can import it without
importing the package's lazy API (``adapterctl/__init__.py``)."""

__version__ = "0.1.0"
