"""A stand-in for SGLang's OpenAI-compatible server (``python -m sglang.launch_server``), for the
tests of the managed simulator server on machines without a GPU. It takes the launcher's
arguments (``--model-path --host --port --served-model-name``), answers ``/health``,
``/v1/models`` and ``/v1/chat/completions`` as SGLang's server does
(``python/sglang/srt/entrypoints/http_server.py`` upstream), and forks a worker process as
SGLang's scheduler does, so a stop must take the whole process group.

Run as a script (``python sglang_stand_in.py ...``) or copied to ``sglang/launch_server.py`` on
``PYTHONPATH``. Environment: ``STAND_IN_PIDS`` (file the server and worker pids are appended
to); ``STAND_IN_JUDGE`` (when set: the reply to a judge request, one mentioning "covered", and
"I am not sure yet." to any other; otherwise every reply echoes the last message and the
visible GPUs); ``STAND_IN_SERVED`` (optional: a file that gets one "x" per chat request).
Test-only options: ``--startup-delay S``, ``--crash`` (exit 3 before serving, with a log line).
"""

import argparse
import json
import multiprocessing
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def worker():
    while True:
        time.sleep(1)


def reply_text(messages):
    judge = os.environ.get("STAND_IN_JUDGE")
    if judge is None:
        return "stand-in reply to: " + messages[-1]["content"] + " gpu=" + os.environ.get("CUDA_VISIBLE_DEVICES", "")
    time.sleep(0.05)
    return judge if any("covered" in str(m.get("content", "")) for m in messages) else "I am not sure yet."


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-path")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--served-model-name")
    parser.add_argument("--startup-delay", type=float, default=0.0)
    parser.add_argument("--crash", action="store_true")
    args, _ = parser.parse_known_args()
    if args.crash:
        print("stand-in: CUDA out of memory (simulated)", flush=True)
        sys.exit(3)
    child = multiprocessing.Process(target=worker)
    child.start()
    with open(os.environ["STAND_IN_PIDS"], "a") as f:
        f.write(f"{os.getpid()} {child.pid}\n")
    time.sleep(args.startup_delay)
    name = args.served_model_name or args.model_path
    served = os.environ.get("STAND_IN_SERVED")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, obj):
            body = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/health":
                self._send({})
            elif self.path == "/v1/models":
                self._send({"object": "list", "data": [{"id": name, "object": "model"}]})
            else:
                self.send_error(404)

        def do_POST(self):
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            text = reply_text(req["messages"])
            if served:
                with open(served, "a") as f:
                    f.write("x")
            self._send({"id": "x", "object": "chat.completion", "created": 0, "model": req["model"],
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": text}}],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}})

    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
