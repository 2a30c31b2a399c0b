#!/usr/bin/env bash
# The station page's QR reader, no CDN: zxing-wasm (ZXing-C++ built to WebAssembly) from the npm
# registry, its reader build only: dist/iife/reader/index.js (the script, global ZXingWASM),
# dist/reader/zxing_reader.wasm (the decoder, which the page tells it to load from here) and the licence.
# Into streams/static/vendor/zxing-wasm-$VERSION (git-ignored); the Makefile runs this with the environment.
# The tarball must match the integrity pinned here, which is the registry's (`npm view
# zxing-wasm@3.1.8 dist.integrity`); npm pack checks it against the registry's too.
set -euo pipefail
VERSION=3.1.8
INTEGRITY="sha512-FpxLK7/lfZrlnmqoRUZd+4qpVlYabsuPx6tRxzN7V/E9IwijQ1dOJSlJGHoA2Yc62hkdvzDD8+qjRPGUx+5j+g=="
DEST="$(cd "$(dirname "$0")/.." && pwd)/streams/static/vendor/zxing-wasm-$VERSION"
FILES="package/dist/iife/reader/index.js package/dist/reader/zxing_reader.wasm package/LICENSE"
if [ -f "$DEST/.complete" ]; then exit 0; fi
command -v npm >/dev/null || { echo "vendor-zxing: npm is needed to fetch zxing-wasm@$VERSION (apt-get install npm)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "zxing-wasm@$VERSION" >/dev/null)
got="sha512-$(openssl dgst -sha512 -binary "$work/zxing-wasm-$VERSION.tgz" | base64 -w0)"
if [ "$got" != "$INTEGRITY" ]; then
  echo "vendor-zxing: zxing-wasm-$VERSION.tgz is $got, not the pinned $INTEGRITY" >&2
  exit 1
fi
tar -xzf "$work/zxing-wasm-$VERSION.tgz" -C "$work" $FILES
rm -rf "$DEST" && mkdir -p "$DEST"
cp "$work/package/dist/iife/reader/index.js" "$DEST/zxing-reader.js"
cp "$work/package/dist/reader/zxing_reader.wasm" "$DEST/zxing_reader.wasm"
cp "$work/package/LICENSE" "$DEST/LICENSE"
touch "$DEST/.complete"
echo "vendored zxing-wasm@$VERSION into $DEST"
