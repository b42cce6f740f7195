#!/usr/bin/env bash
# Create the virtualenv and install meshlib into it.
#   bash scripts/venv.sh [VENV]        the package editable + test, lint and docs tools (make test)
#   bash scripts/venv.sh VENV demo     the package and its runtime dependencies only (make demo)
# On a fresh Debian machine python3-venv may be missing: install it with apt-get.
set -euo pipefail
VENV="${1:-.venv}"
MODE="${2:-dev}"
PYTHON="${PYTHON:-python3}"
say() { echo "venv.sh: $*" >&2; }
if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    say "python3-venv is missing, installing it with apt-get"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq python3-venv >/dev/null
fi
if [ ! -x "$VENV/bin/python" ]; then
    say "creating the virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
case "$MODE" in
    demo)
        say "installing meshlib and its runtime dependencies (httpx, tenacity, pybreaker, ...)"
        "$VENV/bin/python" -m pip install -q -e . 2>&1 | grep -v "^WARNING: Location" >&2 || true
        "$VENV/bin/python" -c 'import meshlib, httpx, tenacity' ;;
    dev)
        say "installing meshlib with its test, lint and docs tools (extras dev, docs)"
        "$VENV/bin/python" -m pip install -q -e '.[dev,docs]' 2>&1 \
            | grep -v "^WARNING: Location" >&2 || true
        "$VENV/bin/python" -c 'import meshlib, pytest, mkdocs' ;;
    *)
        say "unknown mode $MODE (use dev or demo)"; exit 2 ;;
esac
say "done"
