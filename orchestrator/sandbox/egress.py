"""The setup phase's only route out: a squid proxy that forwards to an allowlist of hosts, and what it logged.

The proxy runs as a sidecar on a private internal network that holds just it and the setup sandbox; the
sandbox gets no DNS and no other route, so every request it makes goes through squid, which forwards only
to allowlisted hosts (CONNECT for https, plain GET for http) and logs each request, allowed or refused.
This module knows squid's configuration and log format; starting the sidecar is the backend's work.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

PROXY_PORT = 3128
# The Python package index and its file host, the npm registry (and yarn's name for it), Debian's archive.
DEFAULT_ALLOW_HOSTS = ("pypi.org", "files.pythonhosted.org", "registry.npmjs.org", "registry.yarnpkg.com", "deb.debian.org", "security.debian.org")
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_NAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
# One line per request (squid's own codes): time, result/HTTP status, bytes to the client, bytes from it, method, URL.
LOG_FORMAT = "%ts.%03tu %Ss/%03>Hs %<st %>st %rm %ru"
REFUSED = "TCP_DENIED"


def check_host(entry: str) -> str:
    """An allowlist entry in squid's form: 'pypi.org', '.example.com' (it and its subdomains; '*.example.com'
    means the same) or an IPv4 address. Raises ValueError naming what is wrong."""
    host = entry.strip().lower()
    wildcard = host.startswith(("*.", "."))
    name = host.removeprefix("*").removeprefix(".")
    try:
        ipaddress.IPv4Address(name)
        if wildcard:
            raise ValueError(f"{entry!r}: an IP address cannot have subdomains")
        return name
    except ipaddress.AddressValueError:
        pass
    if not _NAME.match(name) or "." not in name and not wildcard and name != "localhost":
        raise ValueError(f"{entry!r} is not a host name like 'pypi.org' or '.example.com' (no scheme, port or path)")
    return f".{name}" if wildcard else name


def normalise_hosts(entries: Iterable[str]) -> tuple[str, ...]:
    """Checked, deduplicated and sorted, dropping names a wildcard entry already covers (squid refuses both)."""
    hosts = sorted({check_host(entry) for entry in entries})
    wildcards = [host for host in hosts if host.startswith(".")]
    return tuple(host for host in hosts if not any(host != w and (host == w[1:] or host.endswith(w)) for w in wildcards))


def covers(allowed: Iterable[str], host: str) -> bool:
    """Whether the allowlist `allowed` lets `host` (an entry, possibly a wildcard) through."""
    host = check_host(host)
    for entry in normalise_hosts(allowed):
        if entry == host or (entry.startswith(".") and (host == entry[1:] or host.endswith(entry))):
            return True
    return False


def squid_config(allow_hosts: Iterable[str], client_subnet: str) -> str:
    """squid.conf for one setup: clients only from the setup network, forwarding only to the allowlist,
    no cache, nothing written to disk, the access log on stdout and squid's own log on stderr."""
    hosts = normalise_hosts(allow_hosts)
    lines = [
        f"http_port {PROXY_PORT}",
        "pid_filename none",
        "cache deny all",
        "cache_mem 8 MB",
        "cache_log stdio:/dev/stderr",
        f"logformat airlock {LOG_FORMAT}",
        "access_log stdio:/dev/stdout airlock",
        "logfile_rotate 0",
        "coredump_dir /tmp",
        "pinger_enable off",
        "shutdown_lifetime 0 seconds",
        "forwarded_for delete",
        "via off",
        "httpd_suppress_version_string on",
        "strip_query_terms on",  # query strings may carry tokens: never logged
        f"include {CREDENTIALS_FILE}",  # the credentials the proxy adds (maybe none)
        f"acl setup_clients src {client_subnet}",
        "http_access deny !setup_clients",
    ]
    if hosts:
        lines += [f"acl allowlist dstdomain -n {' '.join(hosts)}", "http_access allow allowlist"]
    return "\n".join([*lines, "http_access deny all", ""])


CREDENTIALS_FILE = "/tmp/credentials.conf"  # in the proxy's own tmpfs, written from its stdin (see docker_egress)
_TOKEN = re.compile(r"^[A-Za-z0-9._~+/-]+=*$")  # RFC 6750's b64token: nothing squid's quoting could misread


@dataclass(frozen=True)
class Credential:
    """An Authorization header the proxy adds to plain-http requests to `host` (and `port`, when given)."""

    host: str
    port: int | None
    value: str = field(repr=False)  # "user:password" (basic) or a token (bearer)

    def header(self) -> str:
        if ":" in self.value:
            return "Basic " + base64.b64encode(self.value.encode()).decode()
        if not _TOKEN.match(self.value):
            raise ValueError("a token must be letters, digits and -._~+/ (or give user:password for basic auth)")
        return f"Bearer {self.value}"


def parse_credential_target(target: str) -> tuple[str, int | None]:
    """'HOST' or 'HOST:PORT' of --setup-secret; ValueError naming what is wrong."""
    host, _, port = target.partition(":")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{target!r}: the port must be a number from 1 to 65535")
    checked = check_host(host)
    if checked.startswith("."):
        raise ValueError(f"{target!r}: a credential belongs to one host, not a wildcard")
    return checked, int(port) if port else None


def credentials_config(credentials: Iterable[Credential]) -> str:
    """The squid lines that replace any Authorization a client sent to a credential's host by the credential's.
    Kept out of squid_config: it holds secrets, and reaches the proxy only through its stdin."""
    lines = []
    for n, credential in enumerate(credentials):
        acls = f"airlock_credential_{n}"
        lines.append(f"acl {acls} dstdomain -n {credential.host}")
        if credential.port is not None:
            lines.append(f"acl {acls}_port port {credential.port}")
            acls += f" {acls}_port"
        lines += [f"request_header_access Authorization deny {acls}", f'request_header_add Authorization "{credential.header()}" {acls}']
    return "\n".join([*lines, ""])


@dataclass(frozen=True)
class EgressRequest:
    host: str
    allowed: bool
    method: str
    status: int
    bytes: int  # to the client (the download)
    sent: int  # from the client


def parse_log(text: str) -> list[EgressRequest]:
    """squid's access log lines (LOG_FORMAT); anything else (squid's start-up chatter) is skipped."""
    requests = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 6 or "/" not in parts[1] or not parts[2].isdigit() or not parts[3].isdigit():
            continue
        result, _, status = parts[1].partition("/")
        method, url = parts[4], parts[5]
        host = url.rsplit(":", 1)[0] if method == "CONNECT" else (urlsplit(url).hostname or url)
        requests.append(EgressRequest(host.lower(), result != REFUSED, method, int(status) if status.isdigit() else 0, int(parts[2]), int(parts[3])))
    return requests


def summarise(requests: Iterable[EgressRequest]) -> list[dict[str, Any]]:
    """One entry per host and verdict, in order of first contact: host, allowed, requests, bytes."""
    by_host: dict[tuple[str, bool], dict[str, Any]] = {}
    for request in requests:
        entry = by_host.setdefault((request.host, request.allowed), {"host": request.host, "allowed": request.allowed, "requests": 0, "bytes": 0})
        entry["requests"] += 1
        entry["bytes"] += request.bytes
    return list(by_host.values())
