#!/usr/bin/env bash
# Test-only dependencies, from Debian's packages: headless Chromium for the browser test of
# `airlock review` (tests/test_review_browser.py), and a font so its screenshots show text; sshd and
# openssl for the second Docker engine the remote-engine tests put in front of ssh and TLS
# (tests/engine_host.py). Not needed to use airlock; `make test` calls this before pytest.
set -euo pipefail

have_chromium() {
  command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || command -v google-chrome >/dev/null 2>&1
}

need_packages=()
have_chromium || need_packages+=(chromium)
[ -x /usr/sbin/sshd ] || need_packages+=(openssh-server)
command -v ssh >/dev/null 2>&1 || need_packages+=(openssh-client)
command -v openssl >/dev/null 2>&1 || need_packages+=(openssl)
if ! command -v fc-list >/dev/null 2>&1 || [ -z "$(fc-list 2>/dev/null | head -n 1)" ]; then
  need_packages+=(fonts-dejavu-core)
fi
[ ${#need_packages[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "airlock: note: ${need_packages[*]} missing and this is not a root Debian shell; the tests that need them are skipped (the browser test fails in CI)." >&2
  exit 0
fi
echo "airlock: installing ${need_packages[*]} from Debian's packages (for the browser and remote-engine tests)"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_packages[@]}" >/dev/null
have_chromium || { echo "airlock: chromium did not install" >&2; exit 1; }
