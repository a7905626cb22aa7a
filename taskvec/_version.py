"""The release, in one place (the package and the files it writes name it)."""

__version__ = "0.1.0"
