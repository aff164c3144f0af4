#!/usr/bin/env bash
# ncu on llama3-8b and llama2-7b (or the shapes given): the same-bytes copy and our kernel (out of place, in
# place). Clocks left alone.
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
ncu --clock-control none --profile-from-start off --target-processes all \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
    --section WarpStateStats --section SchedulerStats --section SourceCounters \
    --metrics dram__bytes_read.sum,dram__bytes_write.sum,lts__t_bytes.sum,gpu__time_duration.sum,sm__warps_active.avg.pct_of_peak_sustained_active,l1tex__t_bytes.sum \
    python3 scripts/dev/profile_llama.py "$@" > "$OUT/ncu.txt" 2>&1
echo "ncu rc $?"
grep -E "^  [a-z_].*\(|dram__bytes|lts__t_bytes|gpu__time_duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Block Limit|Duration|Warp Cycles Per Issued|Stall|One or More|No Eligible|Waves Per SM|sm__warps_active|l1tex__t_bytes" "$OUT/ncu.txt" | head -90
