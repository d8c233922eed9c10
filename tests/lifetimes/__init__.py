"""micropie.lifetimes: lifespan, disconnect watching, connection tasks."""
