"""Helpers shared by the tests: ASGI drivers, servers, clients, fixtures, apps."""
