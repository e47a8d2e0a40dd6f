"""imshift: bulk work on cloud IM vendors' server APIs."""

__version__ = "0.1.0"
