"""Backends that keep state outside the process, so that several workers can share it.

* ``micropie.sessions.redis.RedisSessionBackend``: sessions in Redis (needs coredis:
  ``pip install 'micropie-anyio[redis]'``).

Publish/subscribe across workers lives in ``micropie.broadcast``.
"""
