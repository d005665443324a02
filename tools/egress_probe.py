"""Can this sandbox reach anything? Run inside it before the agent starts (standard library only).

Tries, all at once and each for a few seconds: a TCP connection to every host:port given as an argument,
to the cluster's API server (KUBERNETES_SERVICE_HOST, which the kubelet gives every container), and a DNS
query to every nameserver of /etc/resolv.conf. Only a completed connection or a DNS answer counts as
reached: a refusal may come from a firewall that rejects instead of dropping. Prints one JSON object:
{"reached": ["10.96.0.1:443", ...], "tried": [...], "details": {target: why it failed}}.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import threading

TIMEOUT_S = 3.0


def _tcp(host: str, port: int) -> str | None:
    """None if a connection was made, else why not."""
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT_S):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def _dns_query() -> bytes:
    """A query for kubernetes.default's A record: any answer at all proves the server was reached."""
    header = struct.pack(">HHHHHH", 0x4A17, 0x0100, 1, 0, 0, 0)
    name = b"".join(bytes([len(part)]) + part for part in (b"kubernetes", b"default")) + b"\0"
    return header + name + struct.pack(">HH", 1, 1)


def _dns(server: str) -> str | None:
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(TIMEOUT_S)
            sock.sendto(_dns_query(), (server, 53))
            sock.recvfrom(512)
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def nameservers(path: str = "/etc/resolv.conf") -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return [fields[1] for line in file if len(fields := line.split()) >= 2 and fields[0] == "nameserver"]
    except OSError:
        return []


def targets(arguments: list[str]) -> dict[str, tuple[str, int]]:
    """'host:port' -> (host, port), loopback left out: it is the sandbox's own."""
    found = list(arguments)
    if host := os.environ.get("KUBERNETES_SERVICE_HOST"):
        found.append(f"{host}:{os.environ.get('KUBERNETES_SERVICE_PORT', '443')}")
    parsed = {}
    for target in found:
        host, _, port = target.rpartition(":")
        host = host.strip("[]")
        if host and port.isdigit() and not host.startswith("127.") and host not in ("localhost", "::1"):
            parsed[target] = (host, int(port))
    return parsed


def main(arguments: list[str]) -> None:
    checks = {f"tcp {target}": (lambda h=host, p=port: _tcp(h, p)) for target, (host, port) in targets(arguments).items()}
    checks |= {f"dns {server}": (lambda s=server: _dns(s)) for server in nameservers() if not server.startswith("127.")}
    results: dict[str, str | None] = {}

    def run(name: str) -> None:
        results[name] = checks[name]()

    threads = [threading.Thread(target=run, args=(name,), daemon=True) for name in checks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT_S + 2)
    reached = [name for name in checks if name in results and results[name] is None]
    details = {name: results.get(name) or "no answer" for name in checks if name not in reached}
    print(json.dumps({"reached": reached, "tried": list(checks), "details": details}))


if __name__ == "__main__":
    main(sys.argv[1:])
