from pathlib import Path

from micropie import App

TEMPLATES = Path(__file__).with_name("templates")


class PageApp(App):
    async def index(self, name="world"):
        return await self._render_template("hello.html", user=name, items=["tea", "cake"])


# template_dir is resolved once, here; without it, "templates" in the current directory
app = PageApp(template_dir=str(TEMPLATES))
