"""A scriptable Serper-compatible search API on 127.0.0.1, for SearchGym tests.

It answers ``POST /search`` the way google.serper.dev does (the request and response fields
UserRL's client uses, ``gyms/SearchGym/searchgym/utils.py``: a JSON body ``{"q", "num"}``, the
key in ``X-API-KEY``; an answer with ``searchParameters``, optional ``answerBox`` and a list of
``organic`` results with ``title``, ``link``, ``snippet``, ``position``). Each request takes the
next scripted answer — a results dict, an HTTP status, or a delay — or the default results.
Every request's body and headers are recorded. A request without the expected key is answered
403, as the real API does.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def results(*items: tuple[str, str], answer_box: dict[str, str] | None = None) -> dict[str, Any]:
    """A Serper answer body with these (title, snippet) organic results."""
    body: dict[str, Any] = {
        "searchParameters": {"type": "search", "engine": "google"},
        "organic": [{"title": t, "link": f"https://example.org/{i}", "snippet": s, "position": i + 1}
                    for i, (t, s) in enumerate(items)],
    }
    if answer_box:
        body["answerBox"] = answer_box
    return body


class SerperServer:
    def __init__(self, api_key: str = "test-key"):
        self.api_key = api_key
        self.default: dict[str, Any] = results(("Nothing scripted", "The default answer."))
        self._script: deque[Any] = deque()
        self.requests: list[dict[str, Any]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/search"

    def script(self, *answers: Any) -> None:
        """Queue answers: a dict (results), a str (raw body), an int (HTTP status) or
        ("sleep", seconds) before the default results."""
        self._script.extend(answers)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                server.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                answer = server._script.popleft() if server._script else server.default
                if isinstance(answer, tuple) and answer[0] == "sleep":
                    time.sleep(answer[1])
                    answer = server.default
                if self.headers.get("X-API-KEY") != server.api_key:
                    answer = 403
                if isinstance(answer, int):
                    self._send(answer, {"message": "scripted status", "statusCode": answer})
                else:  # a results dict, or a raw text body
                    self._send(200, answer)

            def _send(self, status: int, body: Any):
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def __enter__(self) -> "SerperServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
