"""micropie.broadcast: subscribe, forward, memory and Redis backends."""
