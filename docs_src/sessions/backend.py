from micropie import App, SessionBackend


class DictBackend(SessionBackend):
    """Sessions in a dict: a stand-in for your database."""

    def __init__(self):
        self.rows = {}

    async def load(self, session_id):
        return dict(self.rows.get(session_id, {}))

    async def save(self, session_id, data, timeout):
        if not data or timeout <= 0:
            self.rows.pop(session_id, None)  # an empty session, or a logout
        else:
            self.rows[session_id] = dict(data)  # keep it for `timeout` seconds


class CounterApp(App):
    async def index(self):
        visits = self.request.session.get("visits", 0) + 1
        self.request.session["visits"] = visits
        return f"Visit number {visits}"


backend = DictBackend()
app = CounterApp(session_backend=backend, session_timeout=3600)
