#!/bin/sh
# An exec: engine (mbe-compute -c exec:...) for the Slurm tests and the
# balance benchmark: energy and forces from the positions only, so that
# any two runs agree bit for bit, after a wait that the environment sets:
#   MBE_TEST_SLEEP=S        S seconds a frame
#   MBE_TEST_COST=C         C * (frame index + 1) seconds: frames whose cost
#                           grows with their index
#   MBE_TEST_SLOW_TASK=T    2 s more a frame in array task T
#   MBE_TEST_LOG=FILE       one line a frame: task, atoms, frame, start time
[ -n "${MBE_TEST_LOG:-}" ] &&
    echo "${SLURM_ARRAY_TASK_ID:-0} $MBE_NATOMS $MBE_FRAME $(date +%s.%N)" >>"$MBE_TEST_LOG"
[ "${SLURM_ARRAY_TASK_ID:-}" = "${MBE_TEST_SLOW_TASK:-none}" ] && sleep 2
[ -n "${MBE_TEST_SLEEP:-}" ] && sleep "$MBE_TEST_SLEEP"
[ -n "${MBE_TEST_COST:-}" ] &&
    sleep "$(awk -v f="$MBE_FRAME" -v c="$MBE_TEST_COST" 'BEGIN { print c * (f + 1) }')"
exec awk 'NR == 1 { n = $1; next } NR == 2 { next }
NR <= n + 2 { a[NR - 2] = $0; e += $2 - 0.5 * $3 + 0.25 * $4 }
END { print n; printf "energy=%.17g Properties=species:S:1:pos:R:3:forces:R:3\n", e
      for (k = 1; k <= n; k++) print a[k], -1.0, 0.5, -0.25 }'
