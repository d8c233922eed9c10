from micropie import App, ConnectionClosed


class MyApp(App):
    async def ws_echo(self, ws):
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

    async def ws_greet(self, ws, name="Guest"):
        await ws.accept()
        await ws.send_text(f"Hello {name}!")
        await ws.close()


app = MyApp()
