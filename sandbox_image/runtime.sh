#!/bin/sh
# airlock's tool runtime: the programs the tool server runs (Python and its standard library, git, tar,
# ripgrep, a shell, cat, cp), copied with every library they load, their own dynamic loader and libc,
# under one folder. Each program is patched to be started by that loader and to find its libraries
# there (DT_RPATH, which also covers the libraries' own dependencies and Python's dlopen of its
# modules), so the runtime works unchanged in any Linux image: one without Python, git or tar, or whose
# libc is older. An image gets it read-only (see orchestrator/sandbox/tool_runtime.py); the image's own
# python3, git and shell stay the project's.
set -eu
RT=${1:-/opt/airlock-runtime}
PY=$(readlink -f /usr/bin/python3)
VER=${PY##*/python}
LOADER=$(readlink -f /lib64/ld-linux-x86-64.so.2 2>/dev/null || readlink -f /lib/ld-linux-aarch64.so.1)
LOADER_NAME=$(basename "$(ls /lib64/ld-linux-x86-64.so.2 /lib/ld-linux-aarch64.so.1 2>/dev/null | head -n1)")

mkdir -p "$RT/bin" "$RT/lib" "$RT/python/bin" "$RT/python/lib"
cp -a "/usr/lib/python$VER" "$RT/python/lib/"
STDLIB="$RT/python/lib/python$VER"
# What a tool server never imports: tests, GUIs, the 2to3 and pip bootstrappers, docs, build files.
rm -rf "$STDLIB"/test "$STDLIB"/idlelib "$STDLIB"/tkinter "$STDLIB"/turtledemo "$STDLIB"/lib2to3 \
       "$STDLIB"/ensurepip "$STDLIB"/pydoc_data "$STDLIB"/config-* "$STDLIB"/lib-dynload/_test*.so \
       "$STDLIB"/lib-dynload/_xxtestfuzz*.so "$STDLIB"/lib-dynload/xxlimited*.so
cp "$PY" "$RT/python/bin/python3"
cp "$(readlink -f /usr/bin/git)" "$(readlink -f /usr/bin/tar)" "$(readlink -f /usr/bin/rg)" \
   "$(readlink -f /usr/bin/bash)" "$(readlink -f /usr/bin/cat)" "$(readlink -f /usr/bin/cp)" "$RT/bin/"
cp "$(readlink -f /usr/bin/dash)" "$RT/bin/sh"

# Every library any of them loads, by the name it is asked for.
for elf in "$RT"/bin/* "$RT/python/bin/python3" "$STDLIB"/lib-dynload/*.so; do
  ldd "$elf" | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }'
done | sort -u | while read -r name path; do
  [ -e "$RT/lib/$name" ] || cp "$(readlink -f "$path")" "$RT/lib/$name"
done
cp "$LOADER" "$RT/lib/$LOADER_NAME"

for elf in "$RT"/bin/* "$RT/python/bin/python3"; do
  patchelf --set-interpreter "$RT/lib/$LOADER_NAME" --force-rpath --set-rpath "$RT/lib" "$elf"
done
for lib in "$RT"/lib/* "$STDLIB"/lib-dynload/*.so; do
  case "${lib##*/}" in "$LOADER_NAME"|libc.so.*) continue ;; esac
  patchelf --force-rpath --set-rpath "$RT/lib" "$lib"
done
chmod -R a+rX,go-w "$RT"

# It must run on its own: nothing but the runtime in the search path, no system libraries asked for.
env -i "$RT/python/bin/python3" -E -s -S -B -c 'import hashlib, json, select, subprocess, tarfile, zlib, sys; assert sys.prefix == sys.argv[1], sys.prefix' "$RT/python"
env -i "$RT/bin/git" --version >/dev/null
env -i "$RT/bin/tar" --version >/dev/null
env -i "$RT/bin/rg" --version >/dev/null
env -i "$RT/bin/sh" -c 'exit 0'
echo "tool runtime: $(du -sh "$RT" | cut -f1) in $RT"
