"""A local Python package index for hermetic setup tests: a wheel made here, served as a PEP 503 simple
index on the host's address on Docker's default bridge, so only a container on that bridge (the egress
proxy) reaches it. It counts the requests it answers and can require a token (basic auth)."""

from __future__ import annotations

import base64
import hashlib
import http.server
import threading
import zipfile
from pathlib import Path
from typing import Any


def build_wheel(folder: Path, name: str, version: str, module_source: str, entry_points: str = "") -> Path:
    """A pure-Python wheel holding one module named like the project (dashes become underscores), with
    `entry_points` as its entry_points.txt when given."""
    module = name.replace("-", "_")
    dist_info = f"{module}-{version}.dist-info"
    files = {
        f"{module}.py": module_source.encode(),
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: airlock-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        **({f"{dist_info}/entry_points.txt": entry_points.encode()} if entry_points else {}),
    }
    record = "".join(
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n" for path, data in files.items()
    )
    files[f"{dist_info}/RECORD"] = (record + f"{dist_info}/RECORD,,\n").encode()
    wheel = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


class PackageIndex:
    def __init__(self, host: str, wheels: list[Path], token: str | None = None) -> None:
        self.requests: list[str] = []
        self.authorizations: list[str | None] = []  # each request's Authorization header, as received
        self.wheels = {wheel.name: wheel.read_bytes() for wheel in wheels}
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                index.requests.append(self.path)
                index.authorizations.append(self.headers.get("Authorization"))
                if token and self.headers.get("Authorization") != "Basic " + base64.b64encode(f"ci:{token}".encode()).decode():
                    self._answer(401, b"token required", extra={"WWW-Authenticate": 'Basic realm="index"'})
                elif self.path.rstrip("/").startswith("/simple/") and self.path.count("/") >= 2:
                    project = self.path.rstrip("/").rsplit("/", 1)[1]
                    links = "".join(f'<a href="/files/{n}">{n}</a>\n' for n in index.wheels if n.split("-")[0] == project.replace("-", "_"))
                    self._answer(200 if links else 404, f"<html><body>\n{links}</body></html>".encode(), "text/html")
                elif self.path.startswith("/files/") and self.path[7:] in index.wheels:
                    self._answer(200, index.wheels[self.path[7:]], "application/octet-stream")
                else:
                    self._answer(404, b"not found")

            def _answer(self, code: int, body: bytes, kind: str = "text/plain", extra: dict[str, str] | None = None) -> None:
                self.send_response(code)
                for key, value in {"Content-Type": kind, "Content-Length": str(len(body)), **(extra or {})}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.host, self.port = host, self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/simple/"

    def __enter__(self) -> PackageIndex:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()
