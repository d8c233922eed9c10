"""The errors ``micropie.broadcast`` raises, all ``BroadcastError``."""

from __future__ import annotations


class BroadcastError(Exception):
    """Base class of the errors ``micropie.broadcast`` raises."""


class BroadcastUnavailable(BroadcastError):
    """The broker (Redis) cannot be reached: the message was not published, or the
    subscription could not be made. Retrying later may work; the reader reconnects on its own."""


class SlowSubscriber(BroadcastError):
    """The subscription was ended because its queue overflowed (``overflow="disconnect"``)."""


class SubscriptionClosed(BroadcastError):
    """``receive()`` on a subscription whose broadcast has shut down (or whose block was left)."""
