"""The WebSocket examples from the documentation, as a runnable app.

Run it:  python -m micropie examples.websockets.app:app --backend trio
    or:  hypercorn --worker-class trio examples.websockets.app:app
Then open http://127.0.0.1:8000/ in a browser, or connect with any WebSocket client to
ws://127.0.0.1:8000/echo, ws://127.0.0.1:8000/greet/Alice or ws://127.0.0.1:8000/greet?name=Bob.
"""

from __future__ import annotations

from micropie import App, ConnectionClosed

PAGE = """<!doctype html>
<title>micropie WebSockets</title>
<input id="message" value="Hello"> <button id="send">Send to /echo</button>
<pre id="log"></pre>
<script>
  const log = (line) => { document.getElementById("log").textContent += line + "\\n"; };
  const base = location.origin.replace(/^http/, "ws");
  const echo = new WebSocket(base + "/echo");
  echo.onmessage = (event) => log(event.data);
  document.getElementById("send").onclick = () =>
    echo.send(document.getElementById("message").value);
  const greet = new WebSocket(base + "/greet/Alice");
  greet.onmessage = (event) => log(event.data);
</script>
"""


class MyApp(App):
    async def index(self) -> str:
        return PAGE

    async def ws_echo(self, ws):  # type: ignore[no-untyped-def]
        # Accept the connection before receiving or sending messages.
        await ws.accept()
        while True:
            try:
                message = await ws.receive_text()
            except ConnectionClosed:
                # Client closed the connection
                break
            # Send the same message back to the client
            await ws.send_text(f"Echo: {message}")

    async def ws_greet(self, ws, name="Guest"):  # type: ignore[no-untyped-def]
        await ws.accept()
        await ws.send_text(f"Hello {name}!")
        await ws.close()


app = MyApp(session_cookie_secure=False)
