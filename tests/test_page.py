"""The page's early script: in the <head> of the app's HTML page, before gradio's modules; nothing else touched."""

from starlette.applications import Starlette
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from ctxdistill.ui.page import SCRIPT, EarlyScript

PAGE = '<!doctype html><html><head><script type="module" src="./assets/index.js"></script></head><body></body></html>'


def test_the_script_comes_first_in_the_page_and_nowhere_else():
    app = Starlette(
        routes=[
            Route("/", lambda request: HTMLResponse(PAGE)),
            Route("/config", lambda request: JSONResponse({"head": "<head>"})),
        ]
    )
    client = TestClient(EarlyScript(app))
    page = client.get("/")
    assert page.text.startswith("<!doctype html><html><head>" + SCRIPT.decode())
    assert page.text.index("requestAnimationFrame") < page.text.index("index.js")
    assert int(page.headers["content-length"]) == len(page.content)
    assert client.get("/config").json() == {"head": "<head>"}
