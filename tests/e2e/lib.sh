# Shared helpers of the end-to-end tests; sourced by tests/e2e/*.sh.
# Each test is a shell function; run_tests runs the named ones, each in a
# fresh temporary directory, and prints PASS/FAIL lines for tests/run.
set -u
: "${MBE_BIN:?run through tests/run}"
: "${PYTHON:=/usr/bin/python3}"
export PYTHONPATH="$MBE_ROOT/tests/pylib${PYTHONPATH:+:$PYTHONPATH}"
PATH="$MBE_BIN:$PATH"

# fail "why": abort the current test with a reason.
fail() {
    echo "$*" >"$T_DIR/.why"
    exit 1
}

# expect_exit CODE cmd...: run cmd, keep stdout/stderr in $T_DIR/out, err.
expect_exit() {
    local want=$1
    shift
    "$@" >"$T_DIR/out" 2>"$T_DIR/err"
    local rc=$?
    [ "$rc" -eq "$want" ] ||
        fail "'$*' exited $rc, expected $want; stderr: $(head -c 400 "$T_DIR/err")"
}

# expect_err_line REGEX: stderr is exactly one line matching REGEX.
expect_err_line() {
    local n
    n=$(wc -l <"$T_DIR/err")
    [ "$n" -eq 1 ] || fail "expected one line on stderr, got $n: $(head -c 400 "$T_DIR/err")"
    grep -Eq -- "$1" "$T_DIR/err" || fail "stderr '$(cat "$T_DIR/err")' does not match '$1'"
}

py() { "$PYTHON" "$@"; }

run_tests() {
    local t rc
    for t in "$@"; do
        T_DIR=$(mktemp -d /tmp/mbe-e2e.XXXXXX)
        (cd "$T_DIR" && "$t")
        rc=$?
        if [ $rc -eq 0 ]; then
            echo "PASS $t"
        else
            echo "FAIL $t: $(cat "$T_DIR/.why" 2>/dev/null || echo "exit $rc")"
        fi
        rm -rf "$T_DIR"
    done
}
