#!/usr/bin/env bash
# One-command set-up, run by `npm start` and `npm test` on every invocation; each step is skipped
# when already done, so a second run costs a second or two.
#   1. Debian packages: softhsm2 (the development/test token), opencryptoki (a second PKCS#11
#      implementation the tests also run on), opensc (pkcs11-tool), openssl, postgresql (the
#      shared store of replicas; the tests start throwaway clusters from its binaries, never the
#      packaged service), and a C++ toolchain for the native addon and pkcs11js/better-sqlite3.
#   2. npm packages (npm ci against package-lock.json).
#   3. TypeScript build (dist/), the native addon (build/Release/kmsd_native.node) and the web
#      console (dist/console, built by Vite from console/).
# With --with-browser (what `npm test` passes) also Debian's chromium, which the console's browser
# tests drive through playwright-core (no browser download); `npm start` does not need it.
set -euo pipefail
cd "$(dirname "$0")/.."

with_browser=0
for a in "$@"; do
  case "$a" in
    --with-browser) with_browser=1 ;;
    *) printf '[setup] unknown option %s\n' "$a" >&2; exit 2 ;;
  esac
done

say() { printf '[setup] %s\n' "$*" >&2; }

missing=()
command -v softhsm2-util >/dev/null 2>&1 || missing+=(softhsm2)
[ -x /usr/sbin/pkcsslotd ] || missing+=(opencryptoki)
command -v pkcs11-tool >/dev/null 2>&1 || missing+=(opensc)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# Debian 12's postgresql is version 15; test/helpers/postgres.ts looks for its binaries there.
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if [ "$with_browser" = 1 ]; then [ -x /usr/bin/chromium ] || missing+=(chromium); fi
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
      say "need root (or sudo) to apt-get install ${missing[*]}"; exit 1
    fi
  fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Where the package's scripts may start services (no policy-rc.d), Debian's postgresql starts its
  # default cluster. kmsd's tests start and stop throwaway clusters of their own; a cluster this
  # install started is stopped again, so nothing runs that nobody asked for.
  if [[ " ${missing[*]} " == *" postgresql "* ]] && command -v pg_lsclusters >/dev/null 2>&1; then
    pg_lsclusters --no-header 2>/dev/null | while read -r ver name _port status _rest; do
      if [ "$status" = online ]; then $SUDO pg_ctlcluster "$ver" "$name" stop || true; fi
    done
  fi
fi

# npm packages: reinstall when the lock file changed since the last install.
stamp=node_modules/.kmsd-installed
if [ ! -f "$stamp" ] || [ package-lock.json -nt "$stamp" ] || [ package.json -nt "$stamp" ]; then
  say "installing npm packages (npm ci; builds pkcs11js, better-sqlite3 and the addon from source)"
  npm ci --no-audit --no-fund --loglevel=error >&2
  touch "$stamp"
fi

# TypeScript: rebuild when any source is newer than the last build.
if [ ! -f dist/.built ] || [ -n "$(find src scripts examples proto tsconfig.json -newer dist/.built -type f 2>/dev/null | head -n 1)" ]; then
  say "compiling TypeScript"
  npx tsc -p tsconfig.json
  touch dist/.built
fi

# Native addon: rebuild when native/ or binding.gyp changed (npm ci builds it the first time).
addon=build/Release/kmsd_native.node
if [ ! -f "$addon" ] || [ -n "$(find native binding.gyp -newer "$addon" -type f 2>/dev/null | head -n 1)" ]; then
  say "building the native addon"
  npx node-gyp rebuild --loglevel=error >&2
fi

# Web console: rebuild when its sources (or the Vite config) are newer than the last build.
if [ ! -f dist/console/.built ] || [ -n "$(find console -newer dist/console/.built -type f 2>/dev/null | head -n 1)" ]; then
  say "building the web console"
  npx tsc -p console/tsconfig.json
  npx vite build --config console/vite.config.mts
  touch dist/console/.built
fi
