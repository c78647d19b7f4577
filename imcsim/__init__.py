"""imcsim: discrete-event device-physics simulator for analog in-memory computing."""

import os as _os

from imcsim._version import __version__

# The science folders sit at the top of the source tree and become imcsim.physics,
# imcsim.scenarios and imcsim.analysis through package_dir when installed. When this file is
# imported from a checkout instead (the checkout on sys.path, e.g. `python -m pytest` at its
# root with a non-editable install), let the subpackages resolve to those folders too.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_checkout, "physics", "__init__.py")):
    __path__.append(_checkout)

__all__ = ["__version__"]
