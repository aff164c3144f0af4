#!/usr/bin/env bash
# Session 3, first device call: copy sweep, kernel variants (BATCH_INNER), ncu of the copies.
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv > "$OUT/smi.txt"
python3 scripts/dev/copy_sweep.py > "$OUT/copy_sweep.txt" 2>&1; echo "copy_sweep rc $?"
python3 scripts/dev/ceiling.py > "$OUT/ceiling.txt" 2>&1; echo "ceiling rc $?"
PYTHONPATH=src:scripts/dev ncu --clock-control none --profile-from-start off --target-processes all \
    --section LaunchStats --section Occupancy --section SpeedOfLight \
    --metrics dram__bytes_read.sum,dram__bytes_write.sum,gpu__time_duration.sum,sm__warps_active.avg.pct_of_peak_sustained_active,smsp__inst_executed.sum,lts__t_bytes.sum \
    python3 scripts/dev/profile_copy.py > "$OUT/ncu-copy.txt" 2>&1; echo "ncu rc $?"
grep -E "^  [a-zA-Z_].*\(|dram__bytes|gpu__time|sm__warps_active|inst_executed|lts__t_bytes|Registers Per|Achieved Occ|Theoretical Occ|Block Limit Reg|Waves Per SM|DRAM Throughput" "$OUT/ncu-copy.txt" | head -60
cat "$OUT/copy_sweep.txt" | cut -c1-110
cut -c1-120 "$OUT/ceiling.txt"
