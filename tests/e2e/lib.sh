# lib.sh - the harness shared by the end-to-end scripts of tests/e2e/;
# sourced (". "$(dirname "$0")/lib.sh"), never run or listed in TESTS. It
# owns the environment defaults, the scratch directory, the PASS/FAIL/SKIP
# counters, running the binary and the common expectations, and the final
# "N passed, N failed, N skipped" line. It holds no check of its own.
#
# Environment (set by `make check`): MOE_BIN (the binary), MOE_SHARED (the
# reference data, default ../shared), MOE_SRCDIR (the source tree).

BIN=${MOE_BIN:-./moe-studio}
SHARED=${MOE_SHARED:-../shared}
SRC=${MOE_SRCDIR:-.}

pass=0
fail=0
skip=0
# scratch directory, removed on exit; its name contains "moe-e2e"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/moe-e2e-$(basename "$0" .sh)-XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT INT TERM

ok() { pass=$((pass + 1)); echo "PASS: $1"; }
bad() { fail=$((fail + 1)); echo "FAIL: $1"; }
skipped() { skip=$((skip + 1)); echo "SKIP: $1"; }

have_python=no
command -v python3 >/dev/null 2>&1 && have_python=yes

# finish: print the summary line and exit non-zero on any failure.
finish() {
    echo "$pass passed, $fail failed, $skip skipped"
    [ "$fail" -eq 0 ]
    exit $?
}

# require_bin: stop with one failure when the binary is missing.
require_bin() {
    if [ ! -x "$BIN" ]; then
        echo "FAIL: binary $BIN not found"
        echo "0 passed, 1 failed, 0 skipped"
        exit 1
    fi
}

# run_bin ARGS...: run the binary, stdout -> $tmp/out, stderr -> $tmp/err,
# status -> $rc
run_bin() {
    "$BIN" "$@" >"$tmp/out" 2>"$tmp/err"
    rc=$?
}

# expect_ok NAME [PATTERN] -- ARGS...: exit 0 and (if given) stdout matches
# the extended regex PATTERN.
expect_ok() {
    name=$1
    shift
    pat=
    if [ "$1" != "--" ]; then pat=$1; shift; fi
    shift
    run_bin "$@"
    if [ "$rc" -ne 0 ]; then
        bad "$name: exit $rc: $(head -n 3 "$tmp/err")"
    elif [ -n "$pat" ] && ! grep -Eq -- "$pat" "$tmp/out"; then
        bad "$name: stdout does not match /$pat/: $(head -n 3 "$tmp/out")"
    else
        ok "$name"
    fi
}

# expect_err NAME PATTERN -- ARGS...: non-zero exit below 128 (no crash),
# exactly one line on stderr, starting "moe-studio" and matching the
# extended regex PATTERN.
expect_err() {
    name=$1
    pat=$2
    shift 3
    run_bin "$@"
    lines=$(wc -l <"$tmp/err" | tr -d ' ')
    if [ "$rc" -eq 0 ]; then
        bad "$name: exit 0, expected a failure"
    elif [ "$rc" -ge 128 ]; then
        bad "$name: crashed (exit $rc): $(head -n 3 "$tmp/err")"
    elif [ "$lines" != 1 ]; then
        bad "$name: $lines lines on stderr, expected 1: $(head -n 5 "$tmp/err")"
    elif ! grep -Eq '^moe-studio' "$tmp/err"; then
        bad "$name: stderr does not start with 'moe-studio': $(cat "$tmp/err")"
    elif ! grep -Eq -- "$pat" "$tmp/err"; then
        bad "$name: stderr does not name the problem (/$pat/): $(cat "$tmp/err")"
    else
        ok "$name"
    fi
}

# expect_exit NAME CODE PATTERN -- ARGS...: exit CODE, exactly one line on
# stderr, matching the extended regex ERR_PREFIX (default: any
# "moe-studio <cmd>: ") followed by PATTERN.
ERR_PREFIX='^moe-studio [a-z-]+: '
expect_exit() {
    name=$1
    code=$2
    pat=$3
    shift 4
    run_bin "$@"
    lines=$(wc -l <"$tmp/err" | tr -d ' ')
    if [ "$rc" -ne "$code" ]; then
        bad "$name: exit $rc, expected $code: $(head -n 2 "$tmp/err")"
    elif [ "$lines" != 1 ]; then
        bad "$name: $lines lines on stderr, expected 1: $(head -n 5 "$tmp/err")"
    elif ! grep -Eq -- "$ERR_PREFIX" "$tmp/err"; then
        bad "$name: stderr does not start with the command: $(cat "$tmp/err")"
    elif ! grep -Eq -- "$ERR_PREFIX.*$pat" "$tmp/err"; then
        bad "$name: stderr does not name the problem (/$pat/): $(cat "$tmp/err")"
    else
        ok "$name"
    fi
}
