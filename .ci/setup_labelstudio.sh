#!/usr/bin/env bash
# Label Studio server for the integration tests, in its own virtualenv (it pins many packages,
# among them a numpy and a Django that must not meet autolabel's environment), plus a migrated
# data-dir template so that each test session starts a server in seconds instead of minutes.
#
#   AUTOLABEL_LS_VENV     where the venv goes (default: $HOME/.cache/autolabel-ci/lsvenv);
#                         tests/labelstudio_server.py finds the server through the same variable
#   AUTOLABEL_LS_VERSION  label-studio version (default 1.23.2, the one the tests were written on)
#   PYTHON                interpreter for the venv (default python3)
#
# Idempotent: an existing venv of the same version is kept.
set -euo pipefail

LS_VERSION="${AUTOLABEL_LS_VERSION:-1.23.2}"
VENV="${AUTOLABEL_LS_VENV:-$HOME/.cache/autolabel-ci/lsvenv}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.autolabel-ls-version"
TEMPLATE="$VENV/autolabel-template"

if [ -x "$VENV/bin/label-studio" ] && [ "$(cat "$STAMP" 2>/dev/null || true)" = "$LS_VERSION" ]; then
    echo "setup_labelstudio: label-studio $LS_VERSION already in $VENV"
else
    echo "setup_labelstudio: installing label-studio $LS_VERSION into $VENV (a few minutes)"
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV"
    # (this machine's pip config names local index folders that may be absent: drop that noise)
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "label-studio==$LS_VERSION" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    echo "$LS_VERSION" > "$STAMP"
fi

if [ ! -f "$TEMPLATE/label_studio.sqlite3" ]; then
    echo "setup_labelstudio: migrating a template database (about a minute)"
    rm -rf "$TEMPLATE.tmp"
    # Any label-studio command applies the migrations; `version` then exits. The variables
    # LS would otherwise read (HOST, PORT, USERNAME, PASSWORD) are cleared, and its PyPI
    # version check is off so that it never waits on the network.
    env -u HOST -u PORT -u USERNAME -u PASSWORD LATEST_VERSION_CHECK=false \
        "$VENV/bin/label-studio" version --data-dir "$TEMPLATE.tmp" > "$VENV/template.log" 2>&1 \
        || { cat "$VENV/template.log"; exit 1; }
    mv "$TEMPLATE.tmp" "$TEMPLATE"
fi
echo "setup_labelstudio: ready: $VENV/bin/label-studio"
