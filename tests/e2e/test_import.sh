#!/bin/bash
# mbe-import from the command line: usage errors, one-line failures that
# leave the master byte for byte as it was, --overwrite, several keys.
. "$MBE_ROOT/tests/e2e/lib.sh"

EXAMPLE=$MBE_ROOT/examples/water-cluster.xyz

water() {
    printf '3\nwater\nO 0 0 0.1\nH 0.757 0.586 0\nH -0.757 0.586 0\n' >"${1:-w.xyz}"
}

# n_frames of a key, read with h5py.
n_frames() {
    py -c 'import sys, h5py; print(h5py.File(sys.argv[1], "r")[sys.argv[2]].attrs["n_frames"])' "$1" "$2"
}

keys() {
    py -c 'import sys, h5py; f = h5py.File(sys.argv[1], "r"); f.visit(lambda n: print(n) if f[n].attrs.get("dataclass") == "Structure" else None)' "$1" | sort | tr '\n' ' '
}

# A master from the example; snapshot in m.orig.
master_with_water() {
    mbe-import -q -k water "$EXAMPLE" m.h5 || fail "setting up the master"
    cp m.h5 m.orig
}

unchanged() {
    cmp -s m.h5 m.orig || fail "the master changed"
}

test_usage_errors() {
    water
    expect_exit 2 mbe-import
    expect_err_line '^mbe-import: expected TRAJ.xyz and MASTER.h5 \(see mbe-import --help\)$'
    expect_exit 2 mbe-import w.xyz
    expect_err_line 'expected TRAJ.xyz and MASTER.h5'
    expect_exit 2 mbe-import w.xyz m.h5 extra
    expect_err_line "^mbe-import: unexpected argument 'extra'"
    expect_exit 2 mbe-import --bogus w.xyz m.h5
    expect_exit 2 mbe-import --timeout soon w.xyz m.h5
    expect_err_line "^mbe-import: --timeout: 'soon' is not a number of seconds"
    expect_exit 2 mbe-import --timeout -1 w.xyz m.h5
    expect_exit 2 mbe-import -k '' w.xyz m.h5
    expect_err_line 'must not be empty'
    expect_exit 2 mbe-import -k
    [ ! -e m.h5 ] && [ ! -e m.h5.lock ] || fail "a usage error created files"
}

test_help_and_version() {
    expect_exit 0 mbe-import --help
    grep -q '^Usage: mbe-import ' out || fail "no usage on stdout"
    [ ! -s err ] || fail "help wrote to stderr"
    expect_exit 0 mbe-import -h
    expect_exit 0 mbe-import --version
    grep -Eq '^mbe-import \(mbe-shard\) [0-9]' out || fail "version: $(cat out)"
}

test_new_master_default_key() {
    mkdir runs
    cp "$EXAMPLE" runs/water.cluster.xyz
    expect_exit 0 mbe-import runs/water.cluster.xyz m.h5
    expect_err_line '^mbe-import: wrote 250 frames of 12 atoms \(non-periodic\) to m.h5:water.cluster$'
    [ "$(n_frames m.h5 water.cluster)" = 250 ] || fail "n_frames"
    [ -f m.h5.lock ] || fail "no lock file"
}

test_quiet() {
    water
    expect_exit 0 mbe-import -q w.xyz m.h5
    [ ! -s err ] && [ ! -s out ] || fail "-q printed: $(cat out err)"
}

test_second_key() {
    master_with_water
    water
    expect_exit 0 mbe-import -k more/small w.xyz m.h5
    [ "$(keys m.h5)" = "more/small water " ] || fail "keys: $(keys m.h5)"
    [ "$(n_frames m.h5 water)" = 250 ] || fail "first key damaged"
    [ "$(n_frames m.h5 more/small)" = 1 ] || fail "second key"
}

test_existing_key_refused() {
    master_with_water
    water
    expect_exit 1 mbe-import -k water w.xyz m.h5
    expect_err_line "^mbe-import: key 'water' already exists in m.h5 \(use --overwrite to replace it\)$"
    unchanged
}

test_overwrite() {
    master_with_water
    water
    expect_exit 0 mbe-import --overwrite -k water w.xyz m.h5
    [ "$(n_frames m.h5 water)" = 1 ] || fail "not replaced"
    [ "$(keys m.h5)" = "water " ] || fail "keys: $(keys m.h5)"
    expect_exit 0 mbe-import --overwrite -k water "$EXAMPLE" m.h5
    [ "$(n_frames m.h5 water)" = 250 ] || fail "not replaced back"
}

test_missing_xyz() {
    expect_exit 1 mbe-import nope.xyz m.h5
    expect_err_line '^mbe-import: cannot open nope.xyz: No such file or directory$'
    [ ! -e m.h5 ] && [ ! -e m.h5.lock ] || fail "files created"
    master_with_water
    expect_exit 1 mbe-import nope.xyz m.h5
    unchanged
}

test_bad_xyz_leaves_master() {
    master_with_water
    printf '3\n\nO 0 0 0\nH 1 0 0\n' >trunc.xyz
    expect_exit 1 mbe-import trunc.xyz m.h5
    expect_err_line '^mbe-import: trunc.xyz:1: truncated frame 0: the count line says 3 atoms, the file ends after 2$'
    unchanged
    printf '2\n\nO 0 0 0\nH 1 0\n' >short.xyz
    expect_exit 1 mbe-import short.xyz m.h5
    expect_err_line '^mbe-import: short.xyz:4: expected 3 coordinates, found 2$'
    unchanged
    printf '1\n\nQq 0 0 0\n' >elem.xyz
    expect_exit 1 mbe-import elem.xyz m.h5
    expect_err_line "^mbe-import: elem.xyz:3: unknown element 'Qq'$"
    unchanged
    : >empty.xyz
    expect_exit 1 mbe-import empty.xyz m.h5
    expect_err_line '^mbe-import: empty.xyz: empty file \(no frames\)$'
    unchanged
}

test_not_hdf5() {
    water
    echo "not HDF5" >m.h5
    cp m.h5 m.orig
    expect_exit 1 mbe-import w.xyz m.h5
    expect_err_line '^mbe-import: m.h5 is not an HDF5 file$'
    unchanged
}

test_bad_key() {
    master_with_water
    water
    expect_exit 1 mbe-import -k 'a//b' w.xyz m.h5
    expect_err_line "^mbe-import: bad key 'a//b'"
    expect_exit 1 mbe-import -k 'water/positions (Å)/x' w.xyz m.h5
    expect_err_line "is not a group$"
    unchanged
}

test_no_directory() {
    water
    expect_exit 1 mbe-import w.xyz nodir/m.h5
    expect_err_line '^mbe-import: .*nodir'
}

test_lock_timeout() {
    master_with_water
    water
    py -c '
import fcntl, sys, time
fh = open("m.h5.lock", "a")
fcntl.flock(fh, fcntl.LOCK_EX)
open("locked", "w").close()
time.sleep(30)
' &
    local holder=$!
    for _ in $(seq 100); do [ -e locked ] && break; sleep 0.1; done
    expect_exit 1 mbe-import --timeout 0 -k other w.xyz m.h5
    kill "$holder" 2>/dev/null
    wait "$holder" 2>/dev/null
    expect_err_line '^mbe-import: lock m.h5.lock held by another process'
    unchanged
    expect_exit 0 mbe-import -k other w.xyz m.h5
}

# The group is one that mbe-compute (the master reader) accepts.
test_compute_reads_import() {
    [ -x "$MBE_BIN/mbe-compute" ] || fail "mbe-compute not built"
    mbe-import -q "$EXAMPLE" m.h5 || fail "import"
    expect_exit 0 mbe-compute -q -c lj -f 0-4 m.h5 -o s.h5
    [ -f s.h5 ] || fail "no shard"
}

run_tests test_usage_errors test_help_and_version test_new_master_default_key \
    test_quiet test_second_key test_existing_key_refused test_overwrite \
    test_missing_xyz test_bad_xyz_leaves_master test_not_hdf5 test_bad_key \
    test_no_directory test_lock_timeout test_compute_reads_import
