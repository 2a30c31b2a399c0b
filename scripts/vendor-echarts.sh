#!/usr/bin/env bash
# The dashboard's own assets, no CDN: Apache ECharts 4.9.0 from the npm registry (npm pack), of
# which the page needs dist/echarts.min.js, map/json/china.json (provinces), map/json/china-cities.json
# (every prefecture-level region, with its adcode as the feature id) and the licences.
# Into streams/static/vendor/echarts-4.9.0 (git-ignored); the Makefile runs this with the environment.
# npm pack checks the tarball against the integrity hash the registry publishes.
set -euo pipefail
VERSION=4.9.0
DEST="$(cd "$(dirname "$0")/.." && pwd)/streams/static/vendor/echarts-$VERSION"
FILES="package/dist/echarts.min.js package/map/json/china.json package/map/json/china-cities.json package/LICENSE package/NOTICE package/licenses/LICENSE-d3"
if [ -f "$DEST/.complete" ]; then exit 0; fi
command -v npm >/dev/null || { echo "vendor-echarts: npm is needed to fetch echarts@$VERSION (apt-get install npm)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "echarts@$VERSION" >/dev/null)
tar -xzf "$work/echarts-$VERSION.tgz" -C "$work" $FILES
rm -rf "$DEST" && mkdir -p "$DEST"
for f in $FILES; do cp "$work/$f" "$DEST/$(basename "$f")"; done
touch "$DEST/.complete"
echo "vendored echarts@$VERSION into $DEST"
