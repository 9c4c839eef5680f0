#!/bin/bash
# Make examples/water-cluster.xyz: 250 frames of a water tetramer, (H2O)4,
# from a 5 ps GFN2-xTB molecular-dynamics run at 300 K with the Debian xtb
# program (see README.md).  xtb draws random initial velocities, so a new run
# gives a different (statistically equivalent) trajectory.
#
# Usage: examples/make-water-cluster.sh [OUTPUT.xyz]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "${1:-$here/water-cluster.xyz}")
command -v xtb >/dev/null || { echo "$0: xtb not found (apt-get install xtb)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
export OMP_NUM_THREADS=1

# Cyclic tetramer, each water donating one hydrogen bond to the next
# (O-O 2.75 A on a square, free hydrogens alternately above and below).
cat >start.xyz <<'EOF'
12
water tetramer, starting guess
O     1.944544     0.000000     0.000000
H     1.258650     0.685894     0.000000
H     2.535716    -0.158713     0.752480
O     0.000000     1.944544     0.000000
H    -0.685894     1.258650     0.000000
H     0.158713     2.535716    -0.752480
O    -1.944544     0.000000     0.000000
H    -1.258650    -0.685894     0.000000
H    -2.535716     0.158713     0.752480
O    -0.000000    -1.944544     0.000000
H     0.685894    -1.258650     0.000000
H    -0.158713    -2.535716    -0.752480
EOF

# NVT at 300 K for 5 ps, 0.5 fs steps, real hydrogen masses (hmass=1) and no
# bond constraints (shake=0), a frame every 20 fs: 250 frames.
cat >md.inp <<'EOF'
$md
   temp=300.0
   time=5.0
   dump=20.0
   step=0.5
   shake=0
   hmass=1
   velo=false
   nvt=true
$end
EOF

xtb start.xyz --gfn 2 --opt >opt.log 2>&1
xtb xtbopt.xyz --gfn 2 --md --input md.inp >md.log 2>&1

# xtb.trj holds one XYZ frame per dump, with "energy: E gnorm: G" comments
# (Hartree).  Rewrite it as extended XYZ the way ASE writes molecules,
# keeping the time and xtb's MD energy, with 8 decimals (0.01 pm).
awk -v dump=20.0 '
    BEGIN { frame = -1 }
    NF == 1 && $1 ~ /^[0-9]+$/ && line == 0 { n = $1; line = 1; print; next }
    line == 1 {
        frame++
        printf "Properties=species:S:1:pos:R:3 time_fs=%.1f xtb_md_energy_Eh=%s pbc=\"F F F\"\n",
               frame * dump, $2
        line = 2; left = n; next
    }
    line == 2 {
        printf "%-2s %15.8f %15.8f %15.8f\n", $1, $2, $3, $4
        if (--left == 0) line = 0
    }
' xtb.trj >"$out"

frames=$(grep -c '^Properties=' "$out")
echo "$0: wrote $frames frames to $out ($(xtb --version 2>&1 | grep -o 'xtb version [^ ]*'))"
