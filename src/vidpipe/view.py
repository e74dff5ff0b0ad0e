"""The live view: a web page listing a run's cameras, each with its latest annotated frame and figures.

In: ``--serve [HOST:]PORT`` and, from :class:`~vidpipe.monitor.Monitor`, each camera's latest JPEG and
status (frames/s, p99 latency, drops, line and zone counts, state); optionally the run's
:class:`~vidpipe.engine.LiveSources`, which the page can add cameras to and remove them from. Out: a
Flask application served by waitress (``pip install "vidpipe[service]"``) on a thread of its own:

- ``GET /``: the page (it asks for ``/api/cameras`` every second and shows each camera's new frames);
- ``GET /api/cameras``: ``[{"name", "state", "fps", "latency_p99_ms", "dropped", "frames", "frame",
  "lines", "zones"}]``;
- ``GET /camera/<name>.jpg``: its latest annotated frame;
- ``POST /api/cameras`` (``{"source": url}``) and ``DELETE /api/cameras/<name>``: change the cameras,
  with the header ``X-Vidpipe-Token`` (the token printed at start); refused without it.

It listens on 127.0.0.1 unless a host is given. Cameras are shown by name, never by a URL holding
credentials.
"""

from __future__ import annotations

import hmac
import secrets
import threading
from typing import Callable

from .errors import VidpipeError

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>vidpipe: live</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1rem; background: #111; color: #eee; }
#cameras { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 1rem; }
.camera { background: #222; padding: .5rem; border-radius: 6px; }
.camera img { width: 100%; display: block; background: #000; min-height: 120px; }
.camera h2 { font-size: 1rem; margin: .2rem 0; }
.figures { font-size: .8rem; color: #bbb; white-space: pre-wrap; }
form { margin: 1rem 0; } input { margin-right: .5rem; }
</style></head>
<body>
<h1>vidpipe: live cameras</h1>
<form id="add"><input id="source" placeholder="rtsp://camera/stream" size="40">
<input id="token" placeholder="token" size="24"><button type="submit">add camera</button>
<span id="said"></span></form>
<div id="cameras"></div>
<script>
const shown = {};
function token() { return document.getElementById("token").value; }
async function refresh() {
  const cams = await (await fetch("/api/cameras")).json();
  const box = document.getElementById("cameras");
  for (const name of Object.keys(shown)) {
    if (!cams.find(c => c.name === name)) { shown[name].el.remove(); delete shown[name]; }
  }
  for (const c of cams) {
    if (!shown[c.name]) {
      const el = document.createElement("div");
      el.className = "camera"; el.dataset.name = c.name;
      el.innerHTML = `<h2></h2><img alt=""><div class="figures"></div><button>remove</button>`;
      el.querySelector("h2").textContent = c.name;
      el.querySelector("button").onclick = () => fetch("/api/cameras/" + encodeURIComponent(c.name),
        {method: "DELETE", headers: {"X-Vidpipe-Token": token()}});
      box.appendChild(el);
      shown[c.name] = {el: el, frame: -1};
    }
    const s = shown[c.name];
    if (c.frame !== null && c.frame !== s.frame) {
      s.frame = c.frame;
      s.el.querySelector("img").src = "/camera/" + encodeURIComponent(c.name) + ".jpg?frame=" + c.frame;
    }
    s.el.querySelector(".figures").textContent =
      `${c.state} | ${c.fps.toFixed(1)} frames/s | p99 ${c.latency_p99_ms.toFixed(0)} ms | dropped ${c.dropped}` +
      (c.lines ? "\\nlines " + JSON.stringify(c.lines) : "") + (c.zones ? "\\nzones " + JSON.stringify(c.zones) : "");
  }
}
document.getElementById("add").onsubmit = async (e) => {
  e.preventDefault();
  const r = await fetch("/api/cameras", {method: "POST", headers: {"Content-Type": "application/json",
    "X-Vidpipe-Token": token()}, body: JSON.stringify({source: document.getElementById("source").value})});
  document.getElementById("said").textContent = r.ok ? "added" : (await r.json()).error;
};
setInterval(refresh, 1000); refresh();
</script></body></html>
"""


class View:
    """The page's server; ``cameras()`` gives the status list, ``jpeg(name)`` a camera's latest frame
    (None: none yet); ``add(source)`` / ``remove(name)`` change the run's cameras (None: fixed)."""

    def __init__(self, host: str, port: int, cameras: Callable[[], list[dict]],
                 jpeg: Callable[[str], bytes | None], add: Callable[[str], None] | None = None,
                 remove: Callable[[str], bool] | None = None) -> None:
        try:
            from flask import Flask, Response, jsonify, request
            from waitress.server import create_server
        except ImportError:
            raise VidpipeError('--serve needs Flask and waitress: pip install "vidpipe[service]"') from None
        self.token = secrets.token_urlsafe(16)
        app = Flask("vidpipe")

        def allowed() -> bool:
            return hmac.compare_digest(request.headers.get("X-Vidpipe-Token", ""), self.token)

        @app.get("/")
        def page():
            return Response(PAGE, mimetype="text/html")

        @app.get("/api/cameras")
        def listing():
            return jsonify(cameras())

        @app.get("/camera/<name>.jpg")
        def frame(name: str):
            data = jpeg(name)
            if data is None:
                return jsonify(error=f"no frame of {name} yet"), 404
            return Response(data, mimetype="image/jpeg", headers={"Cache-Control": "no-store"})

        @app.post("/api/cameras")
        def adding():
            if add is None:
                return jsonify(error="this run's cameras are fixed (INPUTs); run with --sources to change them"), 409
            if not allowed():
                return jsonify(error="wrong or missing token (X-Vidpipe-Token)"), 403
            source = (request.get_json(silent=True) or {}).get("source")
            if not isinstance(source, str) or not source.strip() or "\0" in source or "\n" in source:
                return jsonify(error="expected {\"source\": \"rtsp://...\"}"), 400
            add(source.strip())
            return jsonify(added=True), 201

        @app.delete("/api/cameras/<name>")
        def removing(name: str):
            if remove is None:
                return jsonify(error="this run's cameras are fixed (INPUTs); run with --sources to change them"), 409
            if not allowed():
                return jsonify(error="wrong or missing token (X-Vidpipe-Token)"), 403
            return (jsonify(removed=True), 200) if remove(name) else (jsonify(error=f"no camera {name}"), 404)

        try:
            self.server = create_server(app, host=host, port=port, threads=4, clear_untrusted_proxy_headers=True)
        except OSError as e:
            raise VidpipeError(f"--serve {host}:{port}: cannot listen there ({e.strerror or e})") from None
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{self.server.effective_port}/"
        self._thread = threading.Thread(target=self.server.run, name="vidpipe-view", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and free the port at once (the server's own close leaves its listening socket to
        the loop, which holds it until the process ends)."""
        from waitress import wasyncore

        self.server.task_dispatcher.shutdown()
        wasyncore.close_all(self.server._map)
        self._thread.join(timeout=5)
