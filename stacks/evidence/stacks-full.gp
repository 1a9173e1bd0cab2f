set terminal pngcairo size 3840,1400 font 'DejaVu Sans,10'
set output 'stacks/evidence/stacks-full.png'
set multiplot layout 2,1 title 'Fabric stacks and baselines across the same emulated link (bench/stacks.sh)'
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.9 border -1
set boxwidth 0.9
set logscale y
set grid ytics
set key outside right top vertical
set xtics rotate by -35 left
set bmargin 9
set title 'TCP goodput (iperf3, CUBIC), Mbit/s, log scale'
set yrange [0.1:*]
plot 'stacks/evidence/stacks-full.dat' using 2:xtic(1) title 'std-ipv4', 'stacks/evidence/stacks-full.dat' using 4:xtic(1) title 'fec', 'stacks/evidence/stacks-full.dat' using 6:xtic(1) title 'arq-lowlat', 'stacks/evidence/stacks-full.dat' using 8:xtic(1) title 'arq-bulk', 'stacks/evidence/stacks-full.dat' using 10:xtic(1) title 'secure', 'stacks/evidence/stacks-full.dat' using 12:xtic(1) title 'kcptun', 'stacks/evidence/stacks-full.dat' using 14:xtic(1) title 'wireguard-go'
set title '64-byte request/response RTT p99 (sockperf over TCP), ms, log scale'
set yrange [*:*]
plot 'stacks/evidence/stacks-full.dat' using 3:xtic(1) title 'std-ipv4', 'stacks/evidence/stacks-full.dat' using 5:xtic(1) title 'fec', 'stacks/evidence/stacks-full.dat' using 7:xtic(1) title 'arq-lowlat', 'stacks/evidence/stacks-full.dat' using 9:xtic(1) title 'arq-bulk', 'stacks/evidence/stacks-full.dat' using 11:xtic(1) title 'secure', 'stacks/evidence/stacks-full.dat' using 13:xtic(1) title 'kcptun', 'stacks/evidence/stacks-full.dat' using 15:xtic(1) title 'wireguard-go'
unset multiplot
