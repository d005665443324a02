#!/usr/bin/env bash
# Make sure a Docker engine answers, installing and starting Debian's docker.io when we may.
# Also installs mmdebstrap, which builds the sandbox's base filesystem when no registry is reachable,
# and registers gVisor's runsc as the optional runtime "runsc" (scripts/ensure-gvisor.sh).
set -euo pipefail

wait_for_docker() {
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 1
  done
  return 1
}

need_packages=()
command -v mmdebstrap >/dev/null 2>&1 || need_packages+=(mmdebstrap)
if ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null 2>&1 || need_packages+=(docker.io)
fi

if [ ${#need_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    if ! docker info >/dev/null 2>&1; then
      echo "airlock: no Docker engine answers and this is not a root Debian shell, so it cannot be installed here." >&2
      echo "airlock: install Docker (https://docs.docker.com/engine/install/), start it, and make sure 'docker info' works for this user." >&2
      exit 1
    fi
    echo "airlock: note: mmdebstrap is missing; building the sandbox image will need a container registry." >&2
  else
    echo "airlock: installing ${need_packages[*]} from Debian's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_packages[@]}" >/dev/null
  fi
fi

if docker info >/dev/null 2>&1; then
  bash "$(dirname "$0")/ensure-gvisor.sh" --reload  # optional: a second wall, registered without a restart
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "airlock: the Docker engine is installed but not running; start it (for example 'sudo systemctl start docker')." >&2
  exit 1
fi

bash "$(dirname "$0")/ensure-gvisor.sh"  # before dockerd starts, which reads daemon.json then
echo "airlock: starting dockerd"
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl start docker
else
  nohup dockerd >/var/log/airlock-dockerd.log 2>&1 &
fi
if ! wait_for_docker; then
  echo "airlock: dockerd did not come up within 60 s; see /var/log/airlock-dockerd.log" >&2
  exit 1
fi
echo "airlock: Docker engine is up"
