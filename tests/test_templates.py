"""Jinja2 templates (``_render_template``, docs/guides/templates.md): async on both backends,
autoescaped, and a template name from the URL can never read a file outside the template folder.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jinja2
import pytest

import micropie.templates
from micropie import App, InMemorySessionBackend
from tests.support.asgi import attach, differs_from_032, http_scope, run_app

pytestmark = pytest.mark.anyio

SECRET = "TOP-SECRET-CONTENT"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A template folder next to a secret file that must never be served."""
    folder = tmp_path / "templates"
    (folder / "sub").mkdir(parents=True)
    (folder / "page.html").write_text("<p>{{ text }}</p>")
    (folder / "feed.xml").write_text("<t>{{ text }}</t>")
    (folder / "note.txt").write_text("{{ text }}")
    (folder / "sub" / "inner.html").write_text("{% for i in items %}[{{ i }}]{% endfor %}")
    (tmp_path / "secret.html").write_text(SECRET)
    return folder


def site_app(folder: Path, **settings: Any) -> App:
    app = App(session_backend=InMemorySessionBackend(), template_dir=str(folder), **settings)

    @attach(app)
    async def show(self: App, name: str, text: str = "<b>&</b>") -> str:
        return await self._render_template(name, text=text, items=[1, 2])

    return app


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("page.html", b"<p>&lt;b&gt;&amp;&lt;/b&gt;</p>"),
        ("feed.xml", b"<t>&lt;b&gt;&amp;&lt;/b&gt;</t>"),
        ("note.txt", b"<b>&</b>"),
        ("sub/inner.html", b"[1][2]"),
    ],
)
async def test_templates_render_with_html_and_xml_autoescaped(
    site: Path, name: str, expected: bytes
) -> None:
    app = site_app(site)
    conn = await run_app(app, http_scope("/show", query_string=b"name=" + name.encode()))
    assert (conn.status, conn.body) == (200, expected)


async def test_the_folder_is_fixed_when_the_app_is_created(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(site.parent)
    app = site_app(Path("templates"))
    monkeypatch.chdir(site / "sub")
    conn = await run_app(app, http_scope("/show", query_string=b"name=page.html&text=x"))
    assert conn.body == b"<p>x</p>"


@pytest.mark.parametrize(
    "name",
    [
        "../secret.html",
        "sub/../../secret.html",
        "./../secret.html",
        "sub/../../../" + "secret.html",
        "ABSOLUTE",
        "%2e%2e/secret.html",
        "..\\secret.html",
        "page.html\x00../../secret.html",
    ],
)
async def test_a_template_name_from_the_url_never_escapes_the_folder(
    site: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    if name == "ABSOLUTE":
        name = str(site.parent / "secret.html")
    app = site_app(site)
    # through the query string and through a path segment
    conn = await run_app(app, http_scope("/show", query_string=f"name={name}".encode()))
    assert (conn.status, conn.body) == (500, b"500 Internal Server Error")
    if "\x00" not in name and not name.startswith("/"):
        conn = await run_app(app, http_scope("/show/" + name))
        assert conn.status in (404, 500)
        assert SECRET.encode() not in conn.body
    assert all(SECRET not in record.getMessage() for record in caplog.records)


async def test_missing_jinja_answers_a_real_500_and_logs_why_once(
    site: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """MicroPie 0.32 answered 200 with an error text; a 500 is what monitoring can see."""
    monkeypatch.setattr(micropie.templates, "JINJA_INSTALLED", False)
    app = site_app(site)
    conn = await run_app(app, http_scope("/show", query_string=b"name=page.html"))
    assert (conn.status, conn.body) == (500, b"500 Internal Server Error")
    assert [(r.levelno, r.getMessage(), r.exc_info) for r in caplog.records] == [
        (
            logging.ERROR,
            "Template 'page.html' not rendered: jinja2 is not installed"
            " (pip install 'micropie-anyio[templates]'); answering 500",
            None,
        )
    ]


async def test_without_jinja_the_app_has_no_environment(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(micropie.templates, "JINJA_INSTALLED", False)
    app = site_app(site)
    assert app.env is None
    with pytest.raises(micropie.templates.TemplatesNotInstalled):
        await micropie.templates.render(None, "page.html", {})


async def test_a_replaced_synchronous_environment_still_renders(site: Path) -> None:
    """Users may set ``app.env``; one without ``enable_async`` renders in a worker thread."""
    app = site_app(site)
    app.env = jinja2.Environment(
        loader=jinja2.DictLoader({"x.html": "{{ text|upper }}"}), autoescape=True
    )
    conn = await run_app(app, http_scope("/show", query_string=b"name=x.html&text=a<"))
    assert conn.body == b"A&lt;"


async def test_async_template_features_work_on_both_backends(site: Path) -> None:
    (site / "async.html").write_text("{% for x in numbers() %}{{ x }}{% endfor %}")

    async def numbers() -> Any:
        for n in range(3):
            yield n

    app = site_app(site)

    @attach(app)
    async def gen(self: App) -> str:
        return await self._render_template("async.html", numbers=numbers)

    conn = await run_app(app, http_scope("/gen"))
    assert conn.body == b"012"


# 0.32 takes name= as its own template-name argument: a TypeError, answered 500.
@differs_from_032("Templates: A context key `name`")
async def test_the_context_may_have_a_key_called_name(site: Path) -> None:
    (site / "greet.html").write_text("<h1>Hello, {{ name }}!</h1>")
    app = site_app(site)

    @attach(app)
    async def greet(self: App, who: str) -> str:
        return await self._render_template("greet.html", name=who)

    conn = await run_app(app, http_scope("/greet/<Alice>"))
    assert (conn.status, conn.body) == (200, b"<h1>Hello, &lt;Alice&gt;!</h1>")


def test_default_folder_is_templates_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    app = App()
    assert app.env.loader.searchpath == [os.path.join(str(tmp_path), "templates")]


def test_the_folder_is_the_one_of_the_working_directory_at_construction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment is made on first use, but the folder was fixed when the app was made."""
    monkeypatch.chdir(tmp_path)
    app = App()
    monkeypatch.chdir(tmp_path.parent)
    assert app.env.loader.searchpath == [os.path.join(str(tmp_path), "templates")]


def test_jinja2_is_imported_only_when_a_template_environment_is_needed() -> None:
    """jinja2 costs every worker process ~6 MB: ``import micropie`` and ``App()`` leave it out."""
    program = (
        "import sys, micropie\n"
        "app = micropie.App()\n"
        "print('jinja2' in sys.modules)\n"
        "app.env\n"
        "print('jinja2' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["False", "True"]
