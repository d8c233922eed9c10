"""Making a redirect target safe for a ``Location`` header."""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit

__all__ = ["encode_location"]


def _ascii_host(netloc: str) -> str:
    """Punycode a non-ASCII host (MicroPie 0.32 dropped such a ``Location`` altogether)."""
    if netloc.isascii():
        return netloc
    userinfo, at, hostport = netloc.rpartition("@")
    host, colon, port = hostport.partition(":")
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        host = quote(host, safe="")
    return f"{userinfo}{at}{host}{colon}{port}"


def encode_location(url: str) -> str:
    """Percent-encode ``url`` for ``Location`` exactly as MicroPie does.

    Non-ASCII text is encoded once and existing ``%xx`` escapes are kept; the path keeps ``/``,
    the query and fragment keep ``=&?/:;+,%``. CR and LF are stripped by ``urlsplit``. Absolute
    and scheme-relative targets pass through: never redirect to a URL taken from user input
    without checking it.
    """
    parts = urlsplit(url)
    return urlunsplit(
        (
            parts.scheme,
            _ascii_host(parts.netloc),
            quote(parts.path, safe="/%"),
            quote(parts.query, safe="=&?/:;+,%"),
            quote(parts.fragment, safe="=&?/:;+,%"),
        )
    )
