"""A failed setup's cause, from the words pip, npm and the system really print (lines captured from real runs)."""

from __future__ import annotations

import pytest

from orchestrator.run.setup_causes import CauseWatch

PIP_UNTRUSTED = [
    "WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) after connection broken by "
    "'SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate in "
    "certificate chain (_ssl.c:992)'))': /simple/iniconfig/",
    "ERROR: Could not find a version that satisfies the requirement iniconfig==2.0.0 (from versions: none)",
    "ERROR: No matching distribution found for iniconfig==2.0.0",
]
NPM_UNTRUSTED = [
    "npm ERR! code SELF_SIGNED_CERT_IN_CHAIN",
    "npm ERR! errno SELF_SIGNED_CERT_IN_CHAIN",
    "npm ERR! request to https://registry.npmjs.org/is-number failed",
]
NPM_RESET = [
    "npm ERR! code ECONNRESET",
    "npm ERR! network Client network socket disconnected before secure TLS connection was established",
    "npm ERR! network This is a problem related to network connectivity.",
]
PIP_PROXY_FAILED = [
    "WARNING: Retrying (Retry(total=0, ...)) after connection broken by 'ProxyError('Cannot connect to proxy.', "
    "OSError('Tunnel connection failed: 503 Service Unavailable'))': /simple/nothere/",
    "ERROR: No matching distribution found for nothere",
]
PIP_MISSING = ["Looking in indexes: http://172.17.0.1:41234/simple/", "ERROR: Could not find a version that satisfies the requirement airlock-nothere (from versions: none)",
               "ERROR: No matching distribution found for airlock-nothere"]  # fmt: skip
NPM_MISSING = ["npm ERR! code E404", "npm ERR! 404 Not Found - GET https://registry.npmjs.org/airlock-nothere - Not found",
               "npm ERR! 404  'airlock-nothere@*' is not in this registry."]  # fmt: skip
DISK = ["dd: error writing '/opt/airlock-env/big': No space left on device", "17+0 records in"]


def explain(lines: list[str], **extra: str) -> str | None:
    watch = CauseWatch()
    for line in lines:
        watch.line(line)
    return watch.explain(ca_source="the host's CA bundle /etc/ssl/certs/ca-certificates.crt", memory="4.0 GiB", disk="16.0 MiB", **extra)


@pytest.mark.parametrize("lines", [PIP_UNTRUSTED, NPM_UNTRUSTED])
def test_an_untrusted_certificate_names_the_bundle_and_the_flag_not_a_missing_package(lines: list[str]) -> None:
    assert explain(lines) == (
        "a certificate on the way to the registry is not trusted (trusting the host's CA bundle /etc/ssl/certs/ca-certificates.crt): "
        "on a network whose egress inspects TLS, give its CA with --setup-ca FILE"
    )


def test_network_failures_on_the_way_are_named() -> None:
    assert explain(NPM_RESET) == "a connection to the registry was reset on the way"
    assert explain(PIP_PROXY_FAILED) == "the egress proxy could not reach the registry (its name did not resolve, or it did not answer)"


def test_a_package_the_registry_does_not_have_is_named() -> None:
    assert explain(PIP_MISSING) == "the registry has no package 'airlock-nothere' (or no version that fits)"
    assert explain(NPM_MISSING) == "the registry has no package 'airlock-nothere@*' (or no version that fits)"


def test_disk_memory_and_nothing_telling() -> None:
    assert explain(DISK) == "the setup ran out of disk: raise [setup] disk (16.0 MiB)"
    assert (
        explain([], out_of_memory="the sandbox ran out of memory (limit 256 MiB)")
        == "the sandbox ran out of memory (limit 256 MiB): raise [setup] memory (4.0 GiB)"
    )
    assert explain(["Traceback (most recent call last):", "SystemExit: 3"]) is None
