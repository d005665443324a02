"""Why a setup failed, in one line: read from pip's, npm's and the system's own words as the log goes by.

Network causes come first: pip answers a registry it could not reach (an untrusted certificate, a reset)
with "No matching distribution found", which would otherwise read as a package that does not exist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# (cause, pattern), most telling first; a pattern's first group, when it has one, names the thing.
_CAUSES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (cause, re.compile(pattern, re.I))
    for cause, pattern in (
        ("certificate", r"CERTIFICATE_VERIFY_FAILED|SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_GET_ISSUER_CERT|unable to get local issuer certificate"
                        r"|self[- ]signed certificate in certificate chain|certificate verify failed"),
        ("unreachable", r"Temporary failure in name resolution|Name or service not known|ENOTFOUND|EAI_AGAIN|Could not resolve host"
                        r"|Tunnel connection failed: 50[234]|502 Bad Gateway|503 Service Unavailable"),
        ("reset", r"ECONNRESET|Connection reset by peer|socket disconnected before secure TLS|ConnectionResetError|RemoteDisconnected|Connection aborted"),
        ("disk", r"No space left on device|ENOSPC"),
        ("missing", r"No matching distribution found for (\S+)|npm (?:ERR!|error) 404 +'?([^'\s]+?)'? is not in (?:this|the npm) registry"),
    )
)  # fmt: skip


@dataclass
class CauseWatch:
    """Fed each log line; remembers the first line of every kind of cause it saw."""

    seen: dict[str, str] = field(default_factory=dict)  # cause -> what it names (or the line)

    def line(self, text: str) -> None:
        for cause, pattern in _CAUSES:
            if cause not in self.seen and (match := pattern.search(text)):
                self.seen[cause] = next((group for group in match.groups() if group), text.strip()[:200])

    def explain(self, *, ca_source: str, out_of_memory: str | None = None, memory: str = "", disk: str = "") -> str | None:
        """The cause as one line, or None when nothing telling was seen."""
        if out_of_memory:
            return f"{out_of_memory}: raise [setup] memory ({memory})"
        if "certificate" in self.seen:
            return (
                f"a certificate on the way to the registry is not trusted (trusting {ca_source}): on a network whose egress "
                "inspects TLS, give its CA with --setup-ca FILE"
            )
        if "unreachable" in self.seen:
            return "the egress proxy could not reach the registry (its name did not resolve, or it did not answer)"
        if "reset" in self.seen:
            return "a connection to the registry was reset on the way"
        if "disk" in self.seen:
            return f"the setup ran out of disk: raise [setup] disk ({disk})"
        if "missing" in self.seen:
            return f"the registry has no package {self.seen['missing']!r} (or no version that fits)"
        return None
