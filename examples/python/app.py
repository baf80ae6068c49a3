"""Kiln sample app for the python buildpack.

A stdlib http.server on 0.0.0.0:$PORT that imports the two packages the buildpack installed
from the wheels in vendor/ (see requirements.txt) and shows their versions.
"""

import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import idna
import six


class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        body = (
            "Hello from python\n"
            f"python {sys.version.split()[0]}, six {six.__version__}, idna {idna.__version__}\n"
            f"idna.encode('bücher.example') = {idna.encode('bücher.example').decode()}\n"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8080"))
    print(f"listening on 0.0.0.0:{port}", flush=True)
    ThreadingHTTPServer(("0.0.0.0", port), Hello).serve_forever()
