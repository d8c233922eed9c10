"""micropie's tests; folders mirror the package (see tests/support for the helpers)."""
