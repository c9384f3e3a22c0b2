#!/usr/bin/env bash
# Builds the container image: a static sandport (musl), the example Rust plugins and
# deploy/sandport.toml, FROM scratch (deploy/Containerfile), then prints its size and
# fails if it is 40 MB or more.
#
#   deploy/image.sh [TAG]              # TAG defaults to localhost/sandport:dev
#
#   SANDPORT_PLUGINS=DIR               take echo.wasm, chat.wasm, http_hello.wasm,
#                                      tcp_proxy.wasm and kv.wasm from DIR instead of
#                                      building them
#                                      (the e2e test passes the ones it built already)
#
# Everything is built in target/musl, a target folder of its own: a normal build or a
# `cargo test` running beside it holds the lock of the other one, and the musl build
# never waits on it. The build context is staged in target/musl/context, so podman is
# sent only what the image holds.
set -euo pipefail
cd "$(dirname "$0")/.."
umask 022

tag=${1:-localhost/sandport:dev}
target_dir=$PWD/target/musl
triple=x86_64-unknown-linux-musl
limit=$((40 * 1000 * 1000))

die() { echo "image.sh: $*" >&2; exit 1; }
command -v podman >/dev/null || die "podman is missing (Debian: apt-get install podman)"
command -v musl-gcc >/dev/null || die "musl-gcc is missing (Debian: apt-get install musl-tools)"
rustup target list --installed 2>/dev/null | grep -qx "$triple" || die "rustup target add $triple"

# aws-lc-sys builds C: with musl's gcc wrapper it compiles against musl's headers and
# links into the static binary.
export CC_x86_64_unknown_linux_musl=${CC_x86_64_unknown_linux_musl:-musl-gcc}
start=$(date +%s)
cargo build --release --locked --target "$triple" -p sandport --bin sandport --target-dir "$target_dir"
echo "image.sh: the static sandport built in $(($(date +%s) - start)) s"
bin=$target_dir/$triple/release/sandport
readelf --program-headers "$bin" | grep -q INTERP && die "$bin is not static (it names an interpreter)"

if [ -n "${SANDPORT_PLUGINS:-}" ]; then
    plugins=$SANDPORT_PLUGINS
else
    cargo build --profile plugin --locked --target wasm32-wasip2 -p echo -p chat -p http-hello -p tcp-proxy -p kv \
        --target-dir "$target_dir"
    plugins=$target_dir/wasm32-wasip2/plugin
fi

context=$target_dir/context
rm -rf "$context"
# /var/cache comes with rootfs/, owned by root; only its sandport folder is the user's.
mkdir -p "$context/rootfs/plugins" "$context/rootfs/etc/sandport" "$context/rootfs/tmp" "$context/rootfs/var/cache" \
    "$context/cache/sandport"
# Stripped: the release profile's line tables (150 MB) and the symbol table (8 MB) are
# left out of the image; the unstripped binary beside the build (same code) reads a
# backtrace's addresses.
strip --strip-all -o "$context/rootfs/sandport" "$bin"
chmod 0755 "$context/rootfs/sandport"
for plugin in echo chat http_hello tcp_proxy kv; do
    install -m 0644 "$plugins/$plugin.wasm" "$context/rootfs/plugins/$plugin.wasm"
done
install -m 0644 deploy/sandport.toml "$context/rootfs/etc/sandport/sandport.toml"
# The user the image runs as (USER 65532:65532, distroless's "nonroot" number), named
# so that tools inside and outside the container can show it.
printf 'root:x:0:0:root:/:/sbin/nologin\nsandport:x:65532:65532:sandport:/var/cache/sandport:/sbin/nologin\n' \
    >"$context/rootfs/etc/passwd"
printf 'root:x:0:\nsandport:x:65532:\n' >"$context/rootfs/etc/group"
chmod 1777 "$context/rootfs/tmp"
chmod 0700 "$context/cache/sandport"

podman build --file deploy/Containerfile --tag "$tag" "$context"
size=$(podman image inspect --format '{{.Size}}' "$tag")
echo "image.sh: $tag is $size bytes ($((size / 1000 / 1000)) MB)"
[ "$size" -lt "$limit" ] || die "$tag is $size bytes, not under $limit"
