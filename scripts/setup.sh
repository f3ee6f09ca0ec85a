#!/usr/bin/env bash
# Installs what redtail's demo and tests need on a fresh Debian machine:
# redis-server (tests start their own instances) and a Python virtualenv with
# PyMongo (mongo-sim's tests check that a second real driver accepts it).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-venv)
# Headless Chromium checks the status page as a person would see it.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# A redis-server started by the package's service would hold port 6379; the
# project's tests never use it, so leave it alone.

venv=target/pyenv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import pymongo' 2>/dev/null; then
  echo "setup: creating $venv with pymongo" >&2
  mkdir -p target
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'pymongo>=4.6,<5'
fi
