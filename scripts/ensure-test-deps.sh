#!/usr/bin/env bash
# Test-only dependencies, from Debian's packages: headless Chromium for the browser test of
# `airlock review` (tests/test_review_browser.py), and a font so its screenshots show text.
# Not needed to use airlock; `make test` calls this before pytest.
set -euo pipefail

have_chromium() {
  command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || command -v google-chrome >/dev/null 2>&1
}

need_packages=()
have_chromium || need_packages+=(chromium)
if ! command -v fc-list >/dev/null 2>&1 || [ -z "$(fc-list 2>/dev/null | head -n 1)" ]; then
  need_packages+=(fonts-dejavu-core)
fi
[ ${#need_packages[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "airlock: note: ${need_packages[*]} missing and this is not a root Debian shell; install Chromium to run the report's browser test (it is skipped without it, and fails in CI)." >&2
  exit 0
fi
echo "airlock: installing ${need_packages[*]} from Debian's packages (for the report's browser test)"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_packages[@]}" >/dev/null
have_chromium || { echo "airlock: chromium did not install" >&2; exit 1; }
