"""The version, in one place: the package, the API and run manifests read it; so does pyproject.toml."""

__version__ = "0.1.0"
