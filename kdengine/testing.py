"""Contract checks for plugin authors: ``from kdengine.testing import check_loss_term, ...``.

The checks live in :mod:`kdengine.plugins.contracts`; this module is their public, stable name.
"""

from kdengine.plugins.contracts import *  # noqa: F401,F403
from kdengine.plugins.contracts import __all__  # noqa: F401
