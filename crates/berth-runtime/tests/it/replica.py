"""A stand-in replica for berth-runtime tests: serves GET /health, misbehaves on request."""

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--alias", default="")
parser.add_argument("--delay", type=float, default=0.0, help="seconds before listening")
parser.add_argument("--unready-for", type=float, default=0.0, help="seconds /health answers 503")
parser.add_argument("--fail-file", help="/health answers 503 while this file exists")
parser.add_argument("--exit-after", type=float, help="exit this many seconds after listening")
parser.add_argument("--exit-code", type=int, default=0)
parser.add_argument("--ignore-term", action="store_true")
parser.add_argument("--report", help="write argv and environment here, one `argv:`/`env:` line each")
parser.add_argument("--spawn-child", help="start `sleep` in the group; write its pid here")
parser.add_argument("--spam", type=int, default=0, help="lines to print on stdout and stderr")
args = parser.parse_args()


def write_atomically(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)


if args.ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if args.report:
    lines = [f"argv:{a}" for a in sys.argv] + [f"env:{k}={v}" for k, v in os.environ.items()]
    write_atomically(args.report, "\n".join(lines) + "\n")
if args.spawn_child:
    child = subprocess.Popen(["sleep", "300"])
    write_atomically(args.spawn_child, str(child.pid))
for i in range(args.spam):
    print(f"stdout line {i} " + "o" * 100)
    print(f"stderr line {i} " + "e" * 100, file=sys.stderr)
sys.stdout.flush()
sys.stderr.flush()

time.sleep(args.delay)
started = time.monotonic()
if args.exit_after is not None:
    threading.Timer(args.exit_after, lambda: os._exit(args.exit_code)).start()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/health":
            self.send_error(404)
            return
        ready = time.monotonic() - started >= args.unready_for
        failing = args.fail_file is not None and os.path.exists(args.fail_file)
        ok = ready and not failing
        body = b'{"status":"ok"}' if ok else b'{"status":"unavailable"}'
        self.send_response(200 if ok else 503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *log_args):
        pass


ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()
