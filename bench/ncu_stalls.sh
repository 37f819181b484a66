# Why the statistics kernel stalls, per launch config: registers, cycles per issued
# instruction and the top stall reasons of one launch under ncu (full reports in $OUT).
#     bash bench/ncu_stalls.sh 64,128,8,3,128 64,64,4,3      # BLOCK_M,BLOCK_N,warps,stages[,maxnreg]
for c in "$@"; do
  report=${OUT:-.}/ncu_$(echo "$c" | tr , _).txt
  CONFIG=$c ncu --clock-control none -k regex:_stats --launch-skip 1 --launch-count 1 \
    --section LaunchStats --section Occupancy --section WarpStateStats --section SourceCounters \
    --print-details all python3 bench/ncu_one.py > "$report" 2>&1
  echo "== $c"
  grep -E "Registers Per Thread  |Duration|Warp Cycles Per Issued" "$report"
  grep -E "^ +Stall " "$report" | sort -k3 -n -r | head -6
done
