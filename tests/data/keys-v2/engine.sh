#!/bin/sh
if [ -n "$MBE_TEST_KILL" ] && [ "$MBE_NATOMS $MBE_FRAME" = "$MBE_TEST_KILL" ]; then
    p=$PPID
    [ "$(cat /proc/$p/comm)" = mbe-compute ] || p=$(awk '{print $4}' /proc/$p/stat)
    kill -9 "$p"
    sleep 5
fi
[ -n "$MBE_TEST_LOG" ] && echo "$MBE_NATOMS $MBE_FRAME" >> "$MBE_TEST_LOG"
exec awk 'NR == 1 { n = $1; next }
NR == 2 { next }
NR <= n + 2 { k = NR - 2; s[k] = $1; x[k] = $2; y[k] = $3; z[k] = $4;
              e += x[k] - 0.5 * y[k] + 0.25 * z[k] }
END { print n
      printf "Properties=species:S:1:pos:R:3:forces:R:3 energy=%.17g pbc=\"F F F\"\n", e
      for (k = 1; k <= n; k++)
          printf "%s %.17g %.17g %.17g %.17g %.17g %.17g\n", s[k], x[k], y[k], z[k], -1.0, 0.5, -0.25 }'
