#!/bin/sh
# ECAL timing calibration, one half of the barrel (--half 0: rings 1-10, --half 1: rings 11-20), from the per-crystal
# energy sums of phisym-reco (CSV: ieta,iphi,hits,sum_et). Synthetic stand-in for the timing fit: each crystal's time
# offset (ps) is read off its mean energy per hit. Writes one CSV of offsets and reports, with ecalstate-job, the
# half's mean offset and how many crystals it saw. Crystals with fewer hits than the handler's --min-hits option
# (ECALSTATE_OPTION_MIN_HITS, default 1) are left out.
#
#     timing_job.sh --half 0|1 --out FILE INPUT.csv...
set -u

half="" out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --half) half=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --) shift; break ;;
        *) break ;;
    esac
done
case "$half" in
    0) first=1 last=10 ;;
    1) first=11 last=20 ;;
    *) ecalstate-job fail "--half must be 0 or 1, not '$half'"; echo "bad --half '$half'" >&2; exit 2 ;;
esac
[ -n "$out" ] || { ecalstate-job fail "no --out file"; echo "no --out file" >&2; exit 2; }
[ $# -gt 0 ] || { ecalstate-job fail "no input file"; echo "no input file" >&2; exit 2; }
for input in "$@"; do  # a missing input (an EOS copy not there yet) fails the job: resubmit retries it
    [ -r "$input" ] || { ecalstate-job fail "input $input not found"; echo "input $input not found" >&2; exit 3; }
done

mkdir -p "$(dirname "$out")" || exit 1
min_hits=${ECALSTATE_OPTION_MIN_HITS:-1}
summary=$(awk -F, -v first="$first" -v last="$last" -v min="$min_hits" -v out="$out.tmp" '
    $1 == "ieta" { next }
    $1 >= first && $1 <= last { hits[$1 "," $2] += $3; et[$1 "," $2] += $4 }
    END {
        print "ieta,iphi,t_ps" > out
        n = 0; sum = 0
        if (min < 1) min = 1
        for (c in hits) if (hits[c] >= min) { t = (et[c] / hits[c] - 1) * 1000; print c "," t > out; n++; sum += t }
        printf "%d %.1f\n", n, (n ? sum / n : 0)
    }' "$@") || { ecalstate-job fail "awk could not read the inputs"; exit 1; }
mv "$out.tmp" "$out" || exit 1
set -- $summary
ecalstate-job number crystals "$1" || exit 1
ecalstate-job number offset_ps "$2" || exit 1
ecalstate-job output "$out" || exit 1
echo "half $half: $1 crystals, mean offset $2 ps"
