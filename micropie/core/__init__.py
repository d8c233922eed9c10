"""The ground floor: ASGI types, errors, JSON, and concurrency helpers every layer uses."""
