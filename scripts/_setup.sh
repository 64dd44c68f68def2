# Sourced by the scripts: creates .venv and installs the project into it when pyproject.toml
# changed since the last install. Everything the project needs comes from its own files.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "setup: installing into $VENV" >&2
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    log="$VENV/install.log"
    if ! { "$VENV/bin/python" -m pip install --disable-pip-version-check --upgrade pip &&
           "$VENV/bin/python" -m pip install --disable-pip-version-check -e ".[dev]"; } >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "setup: pip install failed; the whole log is in $log" >&2
        exit 1
    fi
    rm -f "$VENV"/.installed-*
    touch "$stamp"
fi
export PATH="$VENV/bin:$ROOT/node_modules/.bin:$PATH"

# buf comes from npm (package.json, pinned by package-lock.json); only scripts/buf needs it.
setup_npm_tools() {
    local npm_stamp="$ROOT/node_modules/.installed-$(sha256sum package-lock.json | cut -c1-16)"
    if [ ! -f "$npm_stamp" ]; then
        echo "setup: installing npm tools into node_modules" >&2
        if ! npm ci --no-audit --no-fund >"$VENV/npm.log" 2>&1; then
            tail -n 40 "$VENV/npm.log" >&2
            echo "setup: npm ci failed; the whole log is in $VENV/npm.log" >&2
            exit 1
        fi
        touch "$npm_stamp"
    fi
}
export VIRTUAL_ENV="$VENV"
