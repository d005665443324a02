#!/usr/bin/env bash
# Register gVisor's runsc with the Docker daemon as runtime "runsc", so `airlock run --runtime runsc`
# (or `runtime = "runsc"` in a policy) gives the sandbox a kernel of its own. Optional: without it,
# airlock uses runc; this script never fails the set-up, it says what it could not do.
#
# Debian trixie ships a static runsc with the systrap platform (bookworm's is too old for it, and KVM is
# often unavailable in VMs). The one package is fetched with a private apt configuration naming
# trixie, so the system's apt sources are never changed, and unpacked into /usr/local/lib/airlock.
# The runtime is added to /etc/docker/daemon.json (other keys kept); a running dockerd reloads its
# runtimes on SIGHUP, without a restart. Usage: ensure-gvisor.sh [--reload]
set -euo pipefail

RUNSC=/usr/local/lib/airlock/runsc
DAEMON_JSON=${AIRLOCK_DAEMON_JSON:-/etc/docker/daemon.json}
note() { echo "airlock: gVisor: $*" >&2; }

registered() { docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"runsc"'; }

if registered; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
  note "not registered, and this is not a root Debian shell: runc will be used (see README, 'gVisor')"
  exit 0
fi

if [ ! -x "$RUNSC" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/parts" "$work/prefs" "$work/deb"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" >"$work/sources.list"
  apt_private=(
    -o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=$work/parts"
    -o "Dir::Etc::Preferences=$work/preferences" -o "Dir::Etc::PreferencesParts=$work/prefs"
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o "Dir::State::status=/dev/null"
    -o "APT::Sandbox::User=root"
  )
  echo "airlock: fetching gVisor's runsc from Debian trixie (the system's apt sources are not changed)"
  if ! (apt-get "${apt_private[@]}" -qq update && cd "$work/deb" && apt-get "${apt_private[@]}" -qq download runsc) >"$work/log" 2>&1; then
    note "could not download runsc from Debian trixie: $(tail -n 1 "$work/log"); runc will be used"
    exit 0
  fi
  dpkg-deb -x "$work"/deb/runsc_*.deb "$work/root"
  install -D -m 0755 "$work/root/usr/bin/runsc" "$RUNSC"
fi

# systrap: ptrace-free and KVM-free; --network=none: the sandbox never has a network, and runsc's own
# network stack would refuse to start in the root network namespace.
python3 - "$DAEMON_JSON" "$RUNSC" <<'PY'
import json, os, sys
path, runsc = sys.argv[1], sys.argv[2]
config = {}
if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
        config = json.loads(f.read() or "{}")
config.setdefault("runtimes", {})["runsc"] = {"path": runsc, "runtimeArgs": ["--platform=systrap", "--network=none"]}
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2)
    f.write("\n")
os.replace(path + ".tmp", path)
PY
echo "airlock: registered runsc in $DAEMON_JSON"

if [ "${1:-}" = "--reload" ] && docker info >/dev/null 2>&1; then
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ] && systemctl is-active --quiet docker; then
    systemctl reload docker
  elif [ -s /var/run/docker.pid ]; then
    kill -HUP "$(cat /var/run/docker.pid)"  # this daemon's pid only: other engines may share the machine
  fi
  for _ in $(seq 1 20); do
    registered && exit 0
    sleep 0.5
  done
  note "dockerd did not pick up the runtime; restart it to use runsc"
fi
