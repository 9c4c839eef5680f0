#!/bin/bash
# make check-slurm: the SLURM scripts of examples/slurm on a real Slurm.
#
# Starts a private single-node Slurm (munged, slurmctld, slurmd of Debian's
# slurm-wlm and munge, with their configuration, key, sockets, ports and
# state in a private temporary directory; /etc/slurm and /etc/munge are
# never read or written), then runs the whole flow on
# examples/water-cluster.xyz with GFN2-xTB:
#
#   mbe-import; examples/slurm/submit --time=0:01:00 --signal=B:USR1@50
#   with MBE_RETRIES=1: a compute array of 4 tasks, of which
#     task 3 is slow (1 s a frame) and gets SLURM's USR1 before its time
#            limit: the script passes it on, mbe-compute stops after the
#            frame in progress and leaves a durable .part (exit 5, FAILED)
#     task 4 hangs in its 11th frame, longer than the time limit: SLURM
#            sends TERM at the limit and KILL after KillWait (TIMEOUT); its
#            .part keeps the 10 frames before
#   the merge (afterany), which waits for a lock held meanwhile the way the
#   Python package holds it, applies the 4 shards, reports the missing
#   frames and resubmits them; the resubmitted array and its merge; then
#   the master is checked with h5py against a run outside SLURM.
#
# The slowness is an LD_PRELOAD shim around libxtb's xtb_singlepoint
# (slow-xtb.c) in the first run of tasks 3 and 4 only; the job scripts are
# those of examples/slurm, unchanged.
#
# Needs root (slurmd runs jobs as their user and must be able to) and the
# Debian packages slurm-wlm and munge; SKIP otherwise.  Every daemon is
# stopped by its PID at the end, also on failure or interrupt.
#
# Environment: MBE_BIN (default build/bin, or $BUILD/bin), PYTHON
# (default /usr/bin/python3), KEEP=1 keeps the temporary directory.
# Prints PASS/FAIL/SKIP lines and "N passed, N failed, N skipped".
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${BUILD:-build}
MBE_BIN=${MBE_BIN:-$ROOT/$BUILD/bin}
case $MBE_BIN in /*) ;; *) MBE_BIN=$ROOT/$MBE_BIN ;; esac
PYTHON=${PYTHON:-/usr/bin/python3}
CC=${CC:-cc}
export MBE_ROOT=$ROOT PYTHONDONTWRITEBYTECODE=1 OMP_NUM_THREADS=1
SCRIPTS=$ROOT/examples/slurm
LEVEL=gfn2-xtb
KEY=water-cluster
TIME_LIMIT=0:01:00
WARN=50

passed=0 failed=0 skipped=0
t_start=$SECONDS
pass() { echo "PASS $1 ($((SECONDS - t_start)) s)"; passed=$((passed + 1)); }
fail() { echo "FAIL $1: $2"; failed=$((failed + 1)); }
skip() { echo "SKIP $1: $2"; skipped=$((skipped + 1)); }
summary() {
    echo
    echo "$passed passed, $failed failed, $skipped skipped" \
        "($((SECONDS - t_start)) s)"
}
# A failure that makes the rest meaningless: report, clean up, stop.
fatal() {
    fail "$1" "$2"
    show_logs
    summary
    exit 1
}

for need in slurmctld slurmd munged mungekey sbatch scontrol squeue \
    scancel sinfo; do
    if ! command -v "$need" >/dev/null; then
        skip slurm "$need not installed (apt-get install slurm-wlm munge)"
        summary
        exit 0
    fi
done
if [ "$(id -u)" -ne 0 ]; then
    skip slurm "needs root to run slurmd"
    summary
    exit 0
fi
for p in mbe-import mbe-compute mbe-merge mbe-status; do
    [ -x "$MBE_BIN/$p" ] || {
        fail slurm "$MBE_BIN/$p not built (make build)"
        summary
        exit 1
    }
done

T=$(mktemp -d /tmp/mbe-slurm.XXXXXX) || exit 1
chmod 755 "$T"
W=$T/work                           # the user's directory
mkdir -p "$T/munge" "$T/state" "$T/spool" "$T/once" "$W"
export SLURM_CONF=$T/slurm.conf

. "$ROOT/tests/slurm/cluster.sh"
trap cleanup EXIT
trap 'fail run "interrupted by a signal"; summary; exit 130' INT TERM HUP

check() { "$PYTHON" "$ROOT/tests/slurm/check.py" "$@"; }

# --------------------------------------------------------------- run

cd "$W" || exit 1
start_cluster >"$T/start.log" 2>&1 ||
    fatal cluster_starts "$(tail -n 20 "$T/start.log")"
pass cluster_starts

# The master, and the reference: the same frames computed outside SLURM.
"$MBE_BIN/mbe-import" -q "$ROOT/examples/water-cluster.xyz" master.h5 ||
    fatal import "mbe-import failed"
"$MBE_BIN/mbe-compute" -q -c "$LEVEL" master.h5 -o "$T/ref.h5" ||
    fatal reference "mbe-compute outside SLURM failed"
"$CC" -shared -fPIC -O2 -o "$T/slow-xtb.so" "$ROOT/tests/slurm/slow-xtb.c" \
    -ldl 2>"$T/cc.err" || fatal shim "cannot build slow-xtb.so: $(cat "$T/cc.err")"

# One command submits everything, as a user would; the shim's variables
# go to the jobs with the rest of the environment.
sub=$(LD_PRELOAD=$T/slow-xtb.so MBE_TEST_DELAY=3:1000 MBE_TEST_HANG=4:10 \
    MBE_TEST_ONCE=$T/once MBE_RETRIES=1 MBE_MASTER=master.h5 \
    MBE_BIN=$MBE_BIN MBE_CALC=$LEVEL \
    "$SCRIPTS/submit" --time=$TIME_LIMIT --signal=B:USR1@$WARN 2>&1) ||
    fatal submit "submit failed: $sub"
re='^submit: compute array ([0-9]+) \(4 tasks, 250 frames in [^ ]+\), merge job ([0-9]+)$'
[[ $sub =~ $re ]] || fatal submit "unexpected output: $sub"
A=${BASH_REMATCH[1]} M1=${BASH_REMATCH[2]}
deps=$(job_records "$M1" | field Dependency)
[[ $deps == afterany:${A}_\** || $deps == afterany:$A ]] ||
    fatal submit "merge $M1 has dependency '$deps', expected afterany:$A"
pass submit_array_and_dependent_merge

# Once tasks 3 and 4 compute, a Python program takes the master's lock as
# the package does (flock on master.h5.lock, the file open with h5py) and
# keeps it until the merge has waited for it.
parts_started() {
    [ -f "$W/shards/${A}_3.h5.part" ] && [ -f "$W/shards/${A}_4.h5.part" ] &&
        grep -q 'frames 1/' "$W/mbe-compute-${A}_3.out" 2>/dev/null &&
        grep -q 'frames 1/' "$W/mbe-compute-${A}_4.out" 2>/dev/null
}
wait_for 60 parts_started ||
    fatal tasks_start "tasks 3 and 4 of array $A did not start computing"
"$PYTHON" - "$W/master.h5" "$T/release" "$T/locked" <<'EOF' &
import os, sys, time
sys.path.insert(0, os.path.join(os.environ["MBE_ROOT"], "tests", "pylib"))
from mbetest import PythonLock
import h5py
master, release, locked = sys.argv[1:]
with PythonLock(master), h5py.File(master, "r") as f:
    open(locked, "w").close()
    t0 = time.time()
    while not os.path.exists(release) and time.time() - t0 < 300:
        time.sleep(0.2)
EOF
LOCK_PID=$!
wait_for 10 test -f "$T/locked" || fatal lock "the Python lock was not taken"

# The first array: SLURM's time limit at work.
wait_for 200 job_done "$A" || fatal array_ends "array $A still running"
for t in 1 2; do
    s=$(task_state "$A" $t)
    [ "$s" = "COMPLETED 0:0" ] || fatal array_ends "task $t: '$s'"
    [ -f "$W/shards/${A}_$t.h5" ] || fatal array_ends "no shard of task $t"
done
pass array_ends

log3=$W/mbe-compute-${A}_3.out
s=$(task_state "$A" 3)
why=''
[ "$s" = "FAILED 5:0" ] || why="state '$s', expected 'FAILED 5:0' (exit 5)"
grep -q 'got SIGUSR1' "$log3" || why="${why:+$why; }the script got no USR1"
grep -q 'interrupted by signal 10' "$log3" ||
    why="${why:+$why; }mbe-compute was not interrupted by USR1"
grep -q 'DUE TO TIME LIMIT' "$log3" && why="${why:+$why; }it hit the limit"
out=$(check part "$W/shards/${A}_3.h5.part" 1 61) || why="${why:+$why; }$out"
if [ -z "$why" ]; then pass usr1_before_time_limit_leaves_durable_part
else fail usr1_before_time_limit_leaves_durable_part "$why"; fi

log4=$W/mbe-compute-${A}_4.out
s=$(task_state "$A" 4)
why=''
[ "${s%% *}" = TIMEOUT ] || why="state '$s', expected TIMEOUT"
grep -q 'DUE TO TIME LIMIT' "$log4" || why="${why:+$why; }no time-limit kill"
grep -q 'got SIGUSR1' "$log4" || why="${why:+$why; }the script got no USR1"
out=$(check part "$W/shards/${A}_4.h5.part" 10 10) || why="${why:+$why; }$out"
if [ -z "$why" ]; then pass time_limit_kill_keeps_finished_frames
else fail time_limit_kill_keeps_finished_frames "$why"; fi

# The merge started although tasks failed, and waits for the lock.
merge_waits() { grep -q 'waiting for the lock' "$W/mbe-merge-$M1.out" 2>/dev/null; }
if wait_for 60 merge_waits; then
    sleep 3
    if job_done "$M1"; then
        fail merge_waits_for_package_lock "merge $M1 ended while the lock was held"
    else
        pass merge_waits_for_package_lock
    fi
else
    fail merge_waits_for_package_lock "merge $M1: $(job_records "$M1" | field JobState), no waiting message"
fi
touch "$T/release"
wait "$LOCK_PID" 2>/dev/null
LOCK_PID=''

wait_for 60 job_done "$M1" || fatal merge_after_any "merge $M1 did not end"
mlog=$W/mbe-merge-$M1.out
why=''
s=$(job_records "$M1" | field ExitCode)
[ "$s" = "3:0" ] || why="merge exit code '$s', expected 3:0 (frames missing)"
for t in 1 2; do
    grep -qE "^  $t +COMPLETED +0:0 +finished shard" "$mlog" ||
        why="${why:+$why; }task $t not reported as finished"
done
grep -qE "^  3 +FAILED +5:0 +unfinished shard" "$mlog" ||
    why="${why:+$why; }task 3 not reported"
grep -qE "^  4 +TIMEOUT +[0-9]+:[0-9]+ +unfinished shard" "$mlog" ||
    why="${why:+$why; }task 4 not reported"
n=$(grep -cE "shards/${A}_[1-4]\.h5(\.part)? +$LEVEL .* applied" "$mlog")
[ "$n" -eq 4 ] || why="${why:+$why; }$n of 4 shards applied"
# The spec is in a file, never in the log (10^5 frames are a megabyte).
missing=$(sed -n "s/^missing frames of level $LEVEL: in \([^ ]*\) .*/\1/p" "$mlog")
[ -n "$missing" ] && missing=$(cat "$missing")
[ -n "$missing" ] || why="${why:+$why; }no missing frames reported"
if [ -n "$missing" ]; then
    out=$(check missing "$missing" 250 "$W"/shards/"${A}"_*) ||
        why="${why:+$why; }$out"
fi
if [ -z "$why" ]; then pass merge_after_any_applies_shards_reports_missing
else fail merge_after_any_applies_shards_reports_missing "$why"; fi

# The merge resubmitted the missing frames (MBE_RETRIES=1).
re='submit: compute array ([0-9]+) \(([0-9]+) tasks, [0-9]+ frames in ([^ ]+)\), merge job ([0-9]+)'
[[ $(cat "$mlog") =~ $re ]] || fatal resubmission "no resubmission in $mlog"
B=${BASH_REMATCH[1]} nb=${BASH_REMATCH[2]} spec=$(cat "${BASH_REMATCH[3]}")
M2=${BASH_REMATCH[4]}
wait_for 120 job_done "$M2" || fatal resubmission "merge $M2 did not end"
why=''
[ "$spec" = "$missing" ] || why="resubmitted '$spec', missing was '$missing'"
for t in $(seq "$nb"); do
    s=$(task_state "$B" "$t")
    [ "$s" = "COMPLETED 0:0" ] || why="${why:+$why; }task $t of $B: '$s'"
done
out=$(check covers "$spec" "$W"/shards/"${B}"_*) || why="${why:+$why; }$out"
s=$(job_records "$M2" | field ExitCode)
[ "$s" = "0:0" ] || why="${why:+$why; }merge $M2 exit code '$s'"
grep -q "all frames of level $LEVEL are COMPLETED" "$W/mbe-merge-$M2.out" ||
    why="${why:+$why; }merge $M2 does not report completion"
if [ -z "$why" ]; then pass resubmission_of_missing_frames
else fail resubmission_of_missing_frames "$why"; fi

if out=$(check final "$W/master.h5" "$KEY" "$LEVEL" "$T/ref.h5" 2>&1); then
    pass master_complete_and_equal_to_run_outside_slurm
else fail master_complete_and_equal_to_run_outside_slurm "$out"; fi

if out=$("$MBE_BIN/mbe-status" --missing -l "$LEVEL" "$W/master.h5" 2>&1) &&
    [ -z "$out" ]; then
    pass status_missing_empty
else fail status_missing_empty "mbe-status --missing: '$out'"; fi

# ------------------------------------------ many keys, small pieces
# Six groups of different compositions (check.py keys) in one array of
# 15 pieces of 4 frames, 3 running at a time (MBE_ALL_KEYS,
# MBE_PIECE_FRAMES, MBE_CONCURRENT), computed by an exec: engine that
# sleeps 0.3 s a frame (task 3: 2.3 s); piece 3's mbe-compute killed
# with SIGKILL in the middle; the merge of every shard through its list file; piece 3 run
# again alone with the settings submit recorded (submit-<id>.env: its
# MBE_TASKS and shard names); the merge again; the master must equal the
# same frames computed outside SLURM.
K=$W/keys
mkdir -p "$K"
check keys "$K/master.h5" || fatal keys_master "cannot write the master"
cp "$K/master.h5" "$K/ref.h5"
KCALC=exec:$ROOT/tests/slurm/engine.sh
MBE_TEST_LOG=$T/reflog "$MBE_BIN/mbe-compute" -q --all-keys -c "$KCALC" \
    -l keys "$K/ref.h5" -o "$T/keys-ref.h5" &&
    "$MBE_BIN/mbe-merge" -q "$K/ref.h5" "$T"/keys-ref.h5 ||
    fatal keys_reference "computing the keys outside SLURM failed"
sub=$(MBE_TEST_ONCE=$T/once MBE_TEST_LOG=$T/keylog MBE_TEST_SLEEP=0.3 \
    MBE_TEST_SLOW_TASK=3 \
    MBE_MASTER=$K/master.h5 MBE_BIN=$MBE_BIN MBE_CALC=$KCALC MBE_LEVEL=keys \
    MBE_ALL_KEYS=1 MBE_PIECE_FRAMES=4 MBE_CONCURRENT=3 \
    "$SCRIPTS/submit" --time=0:10:00 2>&1) ||
    fatal keys_submit "submit failed: $sub"
re='^submit: compute array ([0-9]+) \(15 tasks, 3 at a time, 60 frames in [^ ]+\), merge job ([0-9]+)$'
[[ $sub =~ $re ]] || fatal keys_submit "unexpected output: $sub"
KA=${BASH_REMATCH[1]} KM=${BASH_REMATCH[2]}
throttle=$(job_records "$KA" | sed -n 's/.*ArrayTaskThrottle=\([0-9]*\).*/\1/p' | head -n 1)
[ "$throttle" = 3 ] || fatal keys_submit "array $KA throttle '$throttle'"
pass keys_submit_small_pieces_few_at_a_time

# mbe-compute of task T of array A (its environment says so).
compute_pid() {
    local d
    for d in /proc/[0-9]*; do
        [ "$(cat "$d/comm" 2>/dev/null)" = mbe-compute ] || continue
        tr '\0' '\n' 2>/dev/null <"$d/environ" |
            grep -cxE "SLURM_ARRAY_JOB_ID=$1|SLURM_ARRAY_TASK_ID=$2" |
            grep -qx 2 && echo "${d#/proc/}"
    done
}
task3_busy() {
    local n
    n=$(grep -c '^3 ' "$T/keylog" 2>/dev/null)
    [ "${n:-0}" -ge 2 ]
}
wait_for 120 task3_busy || fatal keys_kill "task 3 of $KA never computed"
kpid=$(compute_pid "$KA" 3)
[ -n "$kpid" ] || fatal keys_kill "no mbe-compute of task 3 of $KA"
kill -9 "$kpid"
wait_for 300 job_done "$KA" || fatal keys_kill "array $KA still running"
why=''
for t in $(seq 15); do
    s=$(task_state "$KA" "$t")
    if [ "$t" = 3 ]; then
        [ "${s%% *}" = FAILED ] || why="${why:+$why; }task 3: '$s'"
    else
        [ "$s" = "COMPLETED 0:0" ] || why="${why:+$why; }task $t: '$s'"
    fi
done
ls "$K"/shards/"${KA}"_3.h5.part >/dev/null 2>&1 ||
    why="${why:+$why; }no .part of task 3"
if [ -z "$why" ]; then pass keys_piece_killed_others_complete
else fail keys_piece_killed_others_complete "$why"; fi

wait_for 120 job_done "$KM" || fatal keys_merge "merge $KM did not end"
klog=$W/mbe-merge-$KM.out
why=''
s=$(job_records "$KM" | field ExitCode)
[ "$s" = "3:0" ] || why="merge exit code '$s', expected 3:0 (frames missing)"
nf=$(ls "$K"/shards/"${KA}"_*.h5 "$K"/shards/"${KA}"_*.h5.part | wc -l)
grep -q "^$nf shard files$" "$klog" || why="${why:+$why; }not $nf shard files in one merge"
[ "$nf" -ge 15 ] || why="${why:+$why; }only $nf shard files"
grep -qE "^  3 +FAILED +[0-9]+:[0-9]+ +unfinished shard" "$klog" ||
    why="${why:+$why; }task 3 not reported unfinished"
grep -q "^missing frames of level keys: in " "$klog" ||
    why="${why:+$why; }missing frames not reported"
if [ -z "$why" ]; then pass keys_merge_of_every_shard_through_a_list
else fail keys_merge_of_every_shard_through_a_list "$why"; fi

# Task 3 alone, with the array's settings: piece 3 of 15 into its shards.
env_file=$K/shards/submit-$KA.env
rerun=$( (. "$env_file" && MBE_TEST_ONCE=$T/once MBE_TEST_LOG=$T/keylog \
    sbatch --parsable --array=3 --wait "$SCRIPTS/compute.sbatch") 2>&1)
rerun=${rerun%%;*}
why=''
s=$(task_state "$rerun" 3)
[ "$s" = "COMPLETED 0:0" ] || why="re-run of task 3 ($rerun): '$s'"
grep -q "piece 3/15" "$W/mbe-compute-${rerun}_3.out" ||
    why="${why:+$why; }the re-run did not take piece 3/15"
ls "$K"/shards/"${KA}"_3.k*.h5.part >/dev/null 2>&1 &&
    why="${why:+$why; }task 3's .part left after its re-run"
if [ -z "$why" ]; then pass keys_one_task_run_again_with_recorded_settings
else fail keys_one_task_run_again_with_recorded_settings "$why"; fi
# Alone without MBE_TASKS, an array of one task is refused.
lone=$(MBE_MASTER=$K/master.h5 MBE_CALC=$KCALC MBE_LEVEL=keys MBE_ALL_KEYS=1 \
    MBE_BIN=$MBE_BIN MBE_TEST_ONCE=$T/once sbatch --parsable --array=3 \
    --wait "$SCRIPTS/compute.sbatch" 2>&1)
lone=${lone%%;*}
if [ "$(task_state "$lone" 3)" = "FAILED 2:0" ] &&
    grep -q "an array of one task would compute every frame" \
        "$W/mbe-compute-${lone}_3.out"; then
    pass keys_lone_task_without_mbe_tasks_refused
else
    fail keys_lone_task_without_mbe_tasks_refused \
        "$(task_state "$lone" 3): $(tail -n 2 "$W/mbe-compute-${lone}_3.out")"
fi

km2=$( (. "$env_file" && MBE_TEST_ONCE=$T/once sbatch --parsable --wait \
    "$SCRIPTS/merge.sbatch" "$KA") 2>&1)
km2=${km2%%;*}
why=''
s=$(job_records "$km2" | field ExitCode)
[ "$s" = "0:0" ] || why="second merge exit code '$s'"
out=$(check same "$K/master.h5" "$K/ref.h5" keys 2>&1) || why="${why:+$why; }$out"
if [ -z "$why" ]; then pass keys_master_equal_to_run_outside_slurm
else fail keys_master_equal_to_run_outside_slurm "$why"; fi

# Every daemon stopped by PID, nothing of the jobs left.
pids="$MUNGED_PID $CTLD_PID $SLURMD_PID"
stop_all
left=''
for p in $pids $(job_pids); do
    kill -0 "$p" 2>/dev/null && left="$left $p"
done
if [ -z "$left" ]; then pass daemons_stopped
else fail daemons_stopped "still running:$left"; fi

[ "$failed" -gt 0 ] && show_logs
summary
[ "$failed" -eq 0 ]
