"""The library version (one place: the package, results and manifests read it)."""

__version__ = "0.1.0"
