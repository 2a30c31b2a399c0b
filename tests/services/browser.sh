#!/usr/bin/env bash
# The browser the page tests drive: headless Chromium and a CJK font, from the Debian packages.
# Playwright for Python drives it (executable_path); `playwright install` cannot download here.
#
#   bash tests/services/browser.sh      (idempotent; quick when both are installed)
#
# Installs with apt-get when it can (root, or passwordless sudo). When it cannot, it says why and
# exits 0: the browser tests then skip, each saying why.
set -uo pipefail
PACKAGES=(chromium fonts-wqy-microhei)
say() { echo "browser.sh: $*"; }

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if ! command -v apt-get >/dev/null; then
    say "no apt-get here: ${missing[*]} not installed, the browser tests will skip"; exit 0
fi
if [[ $(id -u) -eq 0 ]]; then SUDO=(); elif sudo -n true 2>/dev/null; then SUDO=(sudo -n); else
    say "not root and no passwordless sudo: ${missing[*]} not installed, the browser tests will skip"; exit 0
fi
say "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    "${SUDO[@]}" apt-get update -q >/dev/null 2>&1
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
        || say "apt-get could not install ${missing[*]}: the browser tests will skip"
fi
exit 0
