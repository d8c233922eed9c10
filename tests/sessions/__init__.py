"""micropie.sessions: session backends."""
