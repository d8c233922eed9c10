"""micropie.serving and ``python -m micropie``: hypercorn, workers, shutdown."""
