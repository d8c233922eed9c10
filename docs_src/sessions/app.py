from micropie import App

USERS = {"alice": "wonderland"}


class LoginApp(App):
    async def login(self, username, password):
        if USERS.get(username) != password:
            return 401, "Wrong username or password"
        self.request.regenerate_session()  # a fresh session id after a login
        self.request.session["user"] = username
        return "Logged in"

    async def me(self):
        user = self.request.session.get("user")
        if user is None:
            return 401, "Not logged in"
        return f"You are {user}"

    async def logout(self):
        self.request.session.clear()  # an empty session is deleted from the backend
        return "Logged out"


app = LoginApp()  # session cookies are Secure by default: sent back over https only
