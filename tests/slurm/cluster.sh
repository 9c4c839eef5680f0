# cluster.sh - a private single-node Slurm for make check-slurm
# (run-slurm.sh) and the balance benchmark (bench/slurm-balance): munged,
# slurmctld and slurmd of Debian's slurm-wlm and munge, with configuration,
# key, sockets, ports and state under $T; /etc/slurm and /etc/munge are
# never read or written.  Sourced by bash with T (a private directory), W
# (the user's directory), PYTHON and SLURM_CONF=$T/slurm.conf set, and
# pass/fail functions defined; every daemon is stopped by its PID
# (stop_all, cleanup).

# ------------------------------------------------------------- cleanup

MUNGED_PID='' CTLD_PID='' SLURMD_PID='' LOCK_PID=''

# Processes of this test's jobs: they inherited MBE_TEST_ONCE=$T/once
# from submit (the daemons and this script did not).
job_pids() {
    local d p
    for d in /proc/[0-9]*; do
        p=${d#/proc/}
        [ "$p" = $$ ] || [ "$p" = "$BASHPID" ] && continue
        tr '\0' '\n' 2>/dev/null <"$d/environ" |
            grep -qxF "MBE_TEST_ONCE=$T/once" && echo "$p"
    done
}

stop_pid() {
    local pid=$1 _
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}

stopped=''
stop_all() {
    [ -n "$stopped" ] && return
    stopped=1
    stop_pid "$LOCK_PID"
    if [ -n "$CTLD_PID" ] && kill -0 "$CTLD_PID" 2>/dev/null; then
        # Jobs first, so that slurmd's steps end their processes.
        scancel --full -u root >/dev/null 2>&1
        local _
        for _ in $(seq 30); do
            [ -z "$(squeue -h -t running,pending,completing 2>/dev/null)" ] &&
                break
            sleep 1
        done
    fi
    stop_pid "$SLURMD_PID"
    stop_pid "$CTLD_PID"
    stop_pid "$MUNGED_PID"
    # Whatever of our jobs survived its slurmstepd.
    local p
    for p in $(job_pids); do
        kill -9 "$p" 2>/dev/null
    done
}

cleanup() {
    stop_all
    if [ "${KEEP:-0}" = 1 ]; then
        echo "kept $T"
    else
        rm -rf "$T"
    fi
}

show_logs() {
    local f
    for f in "$W"/*.out "$T"/slurmctld.log "$T"/slurmd.log; do
        [ -f "$f" ] || continue
        echo "---- ${f#"$T"/} (last 40 lines)"
        tail -n 40 "$f"
    done
}

# ------------------------------------------------------------- helpers

# job_field ID FIELD: the FIELD of each record of job ID (array: one line a
# task, "task value").
job_records() { scontrol -o show job "$1" 2>/dev/null; }
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }

# A job or array is done when none of its records is still to run.
job_done() {
    local recs
    recs=$(job_records "$1") || return 1
    [ -n "$recs" ] || return 1
    ! field JobState <<<"$recs" |
        grep -qE '^(PENDING|RUNNING|CONFIGURING|COMPLETING|SUSPENDED|REQUEUED|RESIZING)$'
}

wait_for() {   # SECONDS COMMAND...: until COMMAND succeeds
    local limit=$1 t0=$SECONDS
    shift
    until "$@"; do
        [ $((SECONDS - t0)) -ge "$limit" ] && return 1
        sleep 1
    done
}

# "state exitcode" of task T of array A.
task_state() {
    job_records "$1" | while read -r line; do
        [ "$(field ArrayTaskId <<<"$line")" = "$2" ] || continue
        echo "$(field JobState <<<"$line") $(field ExitCode <<<"$line")"
    done
}


# ------------------------------------------------------- the cluster

free_ports() {
    "$PYTHON" -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s:
    x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])'
}

start_cluster() {
    mungekey -c -k "$T/munge/munge.key" || return 1
    /usr/sbin/munged -F --force --socket="$T/munge/socket" \
        --key-file="$T/munge/munge.key" --pid-file="$T/munge/munged.pid" \
        --seed-file="$T/munge/munged.seed" --log-file="$T/munge/munged.log" \
        >"$T/munge/out" 2>&1 &
    MUNGED_PID=$!
    wait_for 10 munge_ok || { echo "munged: $(tail -3 "$T/munge/out")"; return 1; }

    local ports
    read -ra ports < <(free_ports) || return 1
    # Four CPUs whatever the machine has (config_overrides): the four
    # tasks, mostly asleep, run at once, and the test takes as long on
    # one core as on many.
    : >"$T/plugstack.conf"     # nothing from /etc/slurm
    cat >"$SLURM_CONF" <<EOF
ClusterName=mbe-ci
SlurmctldHost=localhost
SlurmctldPort=${ports[0]}
SlurmdPort=${ports[1]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$T/munge/socket
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/slurmctld.log
SlurmdLogFile=$T/slurmd.log
MinJobAge=600
KillWait=10
PlugStackConfig=$T/plugstack.conf
SlurmdParameters=config_overrides
NodeName=localhost NodeHostname=$(hostname -s) CPUs=4 RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    slurmctld -D -i -f "$SLURM_CONF" >"$T/slurmctld.out" 2>&1 &
    CTLD_PID=$!
    slurmd -D -f "$SLURM_CONF" >"$T/slurmd.out" 2>&1 &
    SLURMD_PID=$!
    wait_for 30 node_idle || {
        echo "node not idle: $(sinfo -h -o %T 2>&1)"
        tail -n 5 "$T/slurmctld.out" "$T/slurmd.out"
        return 1
    }
}
munge_ok() {
    munge -S "$T/munge/socket" -n 2>/dev/null |
        unmunge -S "$T/munge/socket" >/dev/null 2>&1
}
node_idle() {
    kill -0 "$CTLD_PID" 2>/dev/null && kill -0 "$SLURMD_PID" 2>/dev/null &&
        [ "$(sinfo -h -o %T 2>/dev/null)" = idle ]
}
