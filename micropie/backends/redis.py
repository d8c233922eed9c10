"""The Redis session backend (moved to ``micropie.sessions.redis``)."""

from micropie.sessions.redis import *  # noqa: F403
from micropie.sessions.redis import __all__ as __all__
