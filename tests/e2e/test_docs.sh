#!/bin/bash
# The documentation ships with the programs: every program has a manual
# page that is clean under mandoc -Tlint, names the program and its exit
# status section, and every option of --help appears in it.
. "$MBE_ROOT/tests/e2e/lib.sh"

MAN=$MBE_ROOT/man

lint_clean() {
    local pages=("$MAN"/*.[1-9])
    [ -e "${pages[0]}" ] || fail "no manual pages in $MAN"
    mandoc -Tlint -Wwarning "${pages[@]}" >out 2>&1 ||
        fail "mandoc -Tlint: $(head -c 600 out)"
}

every_program_has_a_page() {
    local p name
    for p in "$MBE_BIN"/mbe-*; do
        name=$(basename "$p")
        [ -f "$MAN/$name.1" ] || fail "$name has no man/$name.1"
        grep -q '^\.Sh EXIT STATUS' "$MAN/$name.1" ||
            fail "man/$name.1 has no EXIT STATUS section"
    done
}

# Long options of --help, each documented in the page as ".Fl -name" or
# ".It Fl x , -name".
help_options_documented() {
    local p name opt
    for p in "$MBE_BIN"/mbe-*; do
        name=$(basename "$p")
        "$p" --help >help 2>&1 || fail "$name --help exited non-zero"
        for opt in $(grep -oE -- '--[a-z][a-z0-9-]+' help | sort -u); do
            grep -qE -- "^\..*(Fl|,) -${opt#--}( |$)" "$MAN/$name.1" ||
                fail "$name: $opt of --help is not in man/$name.1"
        done
    done
}

version_everywhere() {
    local p
    for p in "$MBE_BIN"/mbe-*; do
        "$p" --version >v 2>&1 || fail "$(basename "$p") --version failed"
        grep -q "^$(basename "$p") (mbe-shard) " v ||
            fail "$(basename "$p") --version: $(cat v)"
    done
}

run_tests lint_clean every_program_has_a_page help_options_documented \
    version_everywhere
