#!/usr/bin/env bash
# Refresh requirements.lock, the one lock of every dependency (the project's, and every extra's: dev, timm,
# dashboard, bench, cluster) that the README's install commands, .ci/run and the cluster's node setup install
# with `-c requirements.lock`. Then test the refreshed lock in a fresh virtual environment exactly as a new
# user installs it, and commit it when the tests pass.
#
#   bash scripts/relock.sh                      re-resolve after editing pyproject.toml, keeping every pin
#                                               that still fits (nothing upgrades that need not)
#   bash scripts/relock.sh --upgrade            take the newest release of everything pyproject's ranges allow
#   bash scripts/relock.sh --upgrade-package optuna [--upgrade-package ...]   only these
#   options: --ci (run all of .ci/run instead of the README's test command), --no-test, --no-commit
#
# The resolver is uv's `pip compile` (the dev extra pins uv, so everyone resolves with the same one). The lock
# is universal: one file whose environment markers pick the lines for each platform and Python 3.11 and newer
# (tested only on Linux x86_64 with Python 3.11, where CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "relock: $*" >&2; exit 2; }

upgrade=() test_command=readme commit=1
while [ $# -gt 0 ]; do
    case "$1" in
        --upgrade) upgrade+=(--upgrade) ;;
        --upgrade-package) [ $# -ge 2 ] || die "--upgrade-package needs a package name"
                           upgrade+=(--upgrade-package "$2"); shift ;;
        --ci) test_command=ci ;;
        --no-test) test_command=none ;;
        --no-commit) commit=0 ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see bash scripts/relock.sh --help)" ;;
    esac
    shift
done

uv_bin="$(command -v uv || true)"
[ -n "$uv_bin" ] || die "uv is not installed: pip install -e '.[dev]' -c requirements.lock brings the pinned one"

before="$(mktemp)"
trap 'rm -f "$before"' EXIT
cp requirements.lock "$before" 2>/dev/null || : >"$before"

echo "== resolving with $("$uv_bin" --version)"
"$uv_bin" pip compile pyproject.toml --all-extras --universal --python-version 3.11 --quiet \
    --custom-compile-command "bash scripts/relock.sh" ${upgrade[@]+"${upgrade[@]}"} -o requirements.lock

# The build backend is installed in pip's isolated build environment, which `-c requirements.lock` does not
# reach: pyproject's [build-system] pins setuptools to the lock's version instead (tests/test_lock.py checks it).
setuptools_pin="$(sed -n 's/^setuptools==\([^ ]*\).*/\1/p' requirements.lock | head -n 1)"
[ -n "$setuptools_pin" ] || die "requirements.lock has no setuptools pin to build this project with"
sed -i "s/^requires = \[\"setuptools==[^\"]*\"\]/requires = [\"setuptools==$setuptools_pin\"]/" pyproject.toml

changes="$(diff <(grep -E '^[A-Za-z0-9]' "$before") <(grep -E '^[A-Za-z0-9]' requirements.lock) |
           sed -n 's/^> \(.*\)/\1/p' | sed 's/ ;.*//' | sort -u | paste -sd ' ' - || true)"
if [ -z "$changes" ] && cmp -s "$before" requirements.lock; then
    echo "requirements.lock is unchanged: nothing to test or commit"
    exit 0
fi
echo "changed pins: ${changes:-(markers or comments only)}"

case "$test_command" in
    readme)
        echo "== the README's test command in a fresh virtual environment (about 20 minutes on 2 cores)"
        venv="$(mktemp -d)/venv"
        trap 'rm -f "$before"; rm -rf "$(dirname "$venv")"' EXIT
        python3 -m venv "$venv"
        # shellcheck disable=SC1091
        if ! (. "$venv/bin/activate" && pip install --quiet -e '.[dev]' -c requirements.lock && pytest -q); then
            die "the tests failed on the refreshed lock; it is left uncommitted (git checkout requirements.lock pyproject.toml drops it)"
        fi ;;
    ci)
        echo "== bash .ci/run on the refreshed lock"
        bash .ci/run || die "CI failed on the refreshed lock; it is left uncommitted (git checkout requirements.lock pyproject.toml drops it)" ;;
    none) echo "(tests skipped: --no-test)" ;;
esac

if [ "$commit" -eq 1 ]; then
    git add requirements.lock pyproject.toml
    # pyproject.toml goes in too: an edit there (a new dependency) is the usual reason to relock
    git commit --quiet -m "lock: refresh requirements.lock: $(echo "${changes:-markers only}" | cut -c1-100)" \
        -m "changed pins: ${changes:-none}" -m "bash scripts/relock.sh ${upgrade[*]-}; tests run: $test_command"
    echo "committed: $(git log -1 --format='%h %s' | cut -c1-150)"
fi
echo "your own environment: pip install -e '.[dev]' -c requirements.lock"
