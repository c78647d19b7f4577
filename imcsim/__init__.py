"""imcsim: discrete-event device-physics simulator for analog in-memory computing."""

from imcsim._version import __version__

__all__ = ["__version__"]
