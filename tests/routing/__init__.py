"""micropie.routing: routing rules, and routing under a mount prefix."""
