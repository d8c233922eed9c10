"""micropie.testing: the TestClient and its WebSocket sessions."""
