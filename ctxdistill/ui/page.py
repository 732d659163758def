"""A script the page runs before gradio's own: fewer frames for gradio's status-tracker timers.

Each gradio status tracker redraws its elapsed-time counter on every animation frame, and the one
on the page's loading screen never stops: it is unmounted when the app has loaded while its loop
runs on (gradio 6.31). That loop alone kept an idle tab's renderer at 60 frames a second, about
5 % of a core. The trackers take ``window.requestAnimationFrame`` when their module loads, before
``launch(head=...)`` is in the page, so the index page itself carries the script (EarlyScript, an
ASGI middleware). Their frames are spaced to 4 a second: the counter's tenths still read well.
"""

from __future__ import annotations

SCRIPT = b"""<script>
(() => {
  const frame = window.requestAnimationFrame.bind(window);
  window.requestAnimationFrame = (callback) => /statustracker/.test(new Error().stack || "")
    ? setTimeout(() => frame(callback), 250) : frame(callback);
})();
</script>"""


class EarlyScript:
    """ASGI middleware: SCRIPT as the first thing in the <head> of the app's HTML page."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"].rstrip("/") != "":
            return await self.app(scope, receive, send)
        start, body = {}, []

        async def inject(message):
            if message["type"] == "http.response.start":
                start.update(message)
                return
            body.append(message.get("body", b""))
            if message.get("more_body"):
                return
            page = b"".join(body)
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            if any(k.lower() == b"content-type" and v.startswith(b"text/html") for k, v in headers):
                page = page.replace(b"<head>", b"<head>" + SCRIPT, 1)
            await send({**start, "headers": [*headers, (b"content-length", str(len(page)).encode())]})
            await send({"type": "http.response.body", "body": page})

        return await self.app(scope, receive, inject)
