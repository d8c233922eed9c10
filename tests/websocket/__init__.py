"""micropie.websocket: the WebSocket object, its dispatch, end to end."""
