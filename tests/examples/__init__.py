"""The examples/ apps, end to end."""
