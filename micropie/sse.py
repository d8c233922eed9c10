"""Server-sent events (moved to ``micropie.http.sse``)."""

from micropie.http.sse import *  # noqa: F403
from micropie.http.sse import __all__ as __all__
