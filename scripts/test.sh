#!/usr/bin/env bash
# The test command: `bash scripts/test.sh [pytest arguments...]`.
#
# From a fresh clone on a fresh machine (python3.11 with pip is all it assumes) it
# creates .venv, installs the project with its dev extras, finds or starts a Postgres
# (scripts/ensure_postgres.sh), installs promtool when it can, then runs ruff,
# lint-imports, mypy and pytest. Lint, contract, type and test failures are all
# reported before it exits non-zero.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

section() { printf '\n==> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

section "Python environment (.venv)"
if [[ ! -x .venv/bin/python ]]; then
    python=""
    for candidate in "${PYTHON:-}" python3.11 python3 python; do
        if [[ -n $candidate ]] && command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
            python=$candidate
            break
        fi
    done
    [[ -n $python ]] || die "Python 3.11+ is required (set PYTHON=/path/to/python3.11)"
    echo "creating .venv with $(command -v "$python")"
    "$python" -m venv .venv
fi
# shellcheck source=/dev/null
source .venv/bin/activate
python --version

# Installing takes half a minute even when nothing changed, so a stamp of what was
# installed (pyproject.toml and the interpreter) lets unchanged re-runs skip it.
stamp=.venv/.agent-runner-dev-install
wanted=$(python -c 'import hashlib, sys; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest(), sys.version)')
if [[ ! -f $stamp || $(cat "$stamp") != "$wanted" ]] || ! python -c 'import runner, agents' 2>/dev/null; then
    echo "installing the project and its dev extras (log: .venv/pip-install.log)"
    if ! python -m pip install --disable-pip-version-check -q -e '.[dev]' >.venv/pip-install.log 2>&1; then
        cat .venv/pip-install.log >&2
        die "pip install -e '.[dev]' failed"
    fi
    echo "$wanted" >"$stamp"
else
    echo "dependencies up to date with pyproject.toml"
fi

section "PostgreSQL"
admin_url=$(bash scripts/ensure_postgres.sh | tail -n 1)
[[ -n $admin_url ]] || die "scripts/ensure_postgres.sh printed no URL"
export AGENT_RUNNER_TEST_ADMIN_URL=$admin_url
echo "AGENT_RUNNER_TEST_ADMIN_URL=$AGENT_RUNNER_TEST_ADMIN_URL"

section "promtool and libfaketime (for the metrics and clock-fault tests)"
faketime_library() {
    local found
    for found in /usr/lib/*/faketime/libfaketime.so.1 /usr/lib/faketime/libfaketime.so.1; do
        if [[ -f $found ]]; then echo "$found"; return 0; fi
    done
    return 1
}
packages=()
command -v promtool >/dev/null 2>&1 || packages+=(prometheus)
faketime_library >/dev/null || packages+=(faketime)
if [[ ${#packages[@]} -gt 0 ]]; then
    # Best effort: the tests that need them say why they skip when they are missing.
    apt=()
    if [[ $(id -u) -eq 0 ]]; then
        apt=(apt-get)
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        apt=(sudo -n apt-get)
    fi
    if [[ ${#apt[@]} -gt 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "installing ${packages[*]} with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        "${apt[@]}" update -qq >/dev/null 2>&1 || warn "apt-get update failed"
        "${apt[@]}" install -y -qq --no-install-recommends "${packages[@]}" >/dev/null 2>&1 \
            || warn "apt-get install ${packages[*]} failed"
    fi
fi
if command -v promtool >/dev/null 2>&1; then
    promtool --version 2>&1 | head -n 1
else
    warn "promtool is not available; tests that need it will be skipped"
fi
if faketime_library >/dev/null; then
    echo "libfaketime: $(faketime_library)"
else
    warn "libfaketime is not available; the clock-fault tests will be skipped"
fi

failed=()

section "ruff check runner agents tests scripts"
ruff check runner agents tests scripts || failed+=(ruff)

section "lint-imports (runner never imports agents; agents use runner.api only)"
lint-imports --no-cache || failed+=(lint-imports)

section "mypy (strict on runner and agents; see pyproject.toml)"
mypy || failed+=(mypy)

section "pytest $*"
set +e
python -m pytest "$@"
pytest_status=$?
set -e
if [[ $pytest_status -eq 5 ]]; then
    echo "pytest collected no tests: that is a failure, not a pass" >&2
    failed+=("pytest (no tests collected)")
elif [[ $pytest_status -ne 0 ]]; then
    failed+=("pytest (exit $pytest_status)")
fi

section "Summary"
if [[ ${#failed[@]} -gt 0 ]]; then
    printf 'FAILED: %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "all checks passed"
