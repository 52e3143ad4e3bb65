"""`bitnet.server`, as the README documents it: the OpenAI-compatible server of bitnet/runtime/server.py."""

from bitnet.runtime.server import *  # noqa: F403  (a re-export: the README's name for the module)
from bitnet.runtime.server import __all__ as __all__
