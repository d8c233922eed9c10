"""Close races against a WebSocket server: ``python client.py [PORT]`` (default 8000).

Each connection does the handshake, reads the greeting, then sends its close frame and FIN at
once. Prints "server survived 300 connections", or exits with how many the server took first.
"""

import base64
import os
import socket
import sys

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
CLOSE_1000 = bytes([0x88, 0x82, 0, 0, 0, 0]) + (1000).to_bytes(2, "big")  # zero mask

for attempt in range(300):
    try:
        sock = socket.create_connection(("127.0.0.1", PORT), timeout=5)
    except OSError as error:
        raise SystemExit(f"server gone after {attempt} connections: {error}") from None
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        + f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    try:
        answer = sock.recv(65536)
    except OSError:
        answer = b""
    if not answer.startswith(b"HTTP/1.1 101"):
        raise SystemExit(f"server gone after {attempt} connections")
    try:
        sock.sendall(CLOSE_1000)  # our close frame, and FIN, right away
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
    except OSError:
        pass  # the server closed first
    sock.close()
print("server survived 300 connections")
