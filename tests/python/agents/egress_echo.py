"""A destination for the egress tests, run inside the test's own network namespace: answers
every request with what it received (method, path, headers) as JSON, and `/bytes/N` with N
bytes. `--cert`/`--key` make it HTTPS."""

import argparse
import json
import ssl
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/bytes/"):
            body = b"x" * int(self.path.split("/")[2])
            ctype = "application/octet-stream"
        else:
            body = json.dumps({"server": self.server.name, "method": self.command,
                               "path": self.path,
                               "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
            ctype = "application/json"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--cert")
    p.add_argument("--key")
    a = p.parse_args()
    host, port = a.listen.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), Echo)
    server.name = a.name
    if a.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.cert, a.key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
