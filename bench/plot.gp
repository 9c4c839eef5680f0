# bench/plot.gp - bench/merge.png from bench/merge.dat (written by bench/run).
#   gnuplot -e "cases='contiguous scattered random'" plot.gp   (in bench/)
# merge.dat: one block per case (in the order of `cases`), columns
#   case N master_MB merge_s ref_s ref_capped merge_rss ref_rss dd_overwrite_s
#   dd_new_s merge_rss_buffer8
# A reference stopped at the time cap is plotted at its lower bound, with
# an open triangle.
if (!exists("cases")) cases = "contiguous scattered random"
set terminal pngcairo size 1400,600 font "sans,11"
set output "merge.png"
set multiplot layout 1,2 title "mbe-merge against the package's h5py update (4 shards, 64 atoms per frame)"
set logscale xy
set datafile missing "?"
set grid
set key top left font ",9" box opaque
set xlabel "master size (MB)"
set ylabel "wall time (s)"
set title "time"
set yrange [0.001:1e6]
set style line 1 lc rgb "#1f77b4" pt 7
set style line 2 lc rgb "#d62728" pt 5
set style line 3 lc rgb "#2ca02c" pt 9
nc = words(cases)
plot for [i=1:nc] "merge.dat" index (i-1) using 3:4 with linespoints ls i lw 2 \
         title "mbe-merge, ".word(cases,i), \
     for [i=1:nc] "merge.dat" index (i-1) using 3:($6 > 0 ? 1/0 : $5) with linespoints ls i dt 2 \
         title "reference, ".word(cases,i), \
     for [i=1:nc] "merge.dat" index (i-1) using 3:($6 > 0 ? $5 : 1/0) with points lc rgb "black" pt 8 ps 2 \
         notitle, \
     "merge.dat" index 0 using 3:10 with linespoints lc rgb "gray30" pt 1 dt 3 lw 2 \
         title "dd conv=fsync, new file, bytes of ".word(cases,1), \
     "merge.dat" index 0 using 3:9 with linespoints lc rgb "gray60" pt 2 dt 3 lw 2 \
         title "dd conv=notrunc,fsync, overwrite, bytes of ".word(cases,1)
set title "peak RSS"
set yrange [10:1e4]
set ylabel "peak RSS (MiB)"
plot for [i=1:nc] "merge.dat" index (i-1) using 3:7 with linespoints ls i lw 2 \
         title "mbe-merge, ".word(cases,i), \
     for [i=1:nc] "merge.dat" index (i-1) using 3:8 with linespoints ls i dt 2 \
         title "reference, ".word(cases,i), \
     for [i=1:nc] "merge.dat" index (i-1) using 3:11 with linespoints ls i dt 4 lw 1 \
         title "mbe-merge --buffer 8, ".word(cases,i), \
     64 with lines lc rgb "black" dt 4 title "64 MiB target"
unset multiplot
