# Shared helpers for bench/ scripts. Source it:
#
#   . "$(dirname "$0")/lib.sh"
#   bench_require nbdcopy qemu-nbd
#   bench_time ours   3 go-binary args...
#   bench_time anchor 3 nbdcopy args...
#   bench_ratio "write 1 GiB" anchor ours 1.0
#
# Every script runs our code and the anchor tool on the same input in the
# same run, so the machine's state is shared by both, and prints one line
# per comparison:
#
#   RESULT <name>: ours <s>s, anchor <s>s, ratio <anchor/ours> (target >= T) PASS|MISS
#
# A ratio above 1 means ours is faster. Scripts exit 0 whether or not the
# target is met: they measure, they do not gate CI.

set -euo pipefail

declare -gA BENCH_SECONDS=()

# bench_require CMD...: exit with a message if a tool is missing.
bench_require() {
	local c
	for c in "$@"; do
		if ! command -v "$c" >/dev/null 2>&1; then
			echo "bench: $c is not installed (run scripts/setup)" >&2
			exit 1
		fi
	done
}

# bench_time LABEL RUNS CMD...: run CMD RUNS times (after one warm-up run)
# and keep the median wall-clock seconds under LABEL.
bench_time() {
	local label=$1 runs=$2
	shift 2
	"$@" >/dev/null
	local times=() i start end
	for ((i = 0; i < runs; i++)); do
		start=$(date +%s.%N)
		"$@" >/dev/null
		end=$(date +%s.%N)
		times+=("$(echo "$end - $start" | bc -l)")
	done
	BENCH_SECONDS[$label]=$(printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
	printf 'bench: %s median %.3fs over %d runs\n' "$label" "${BENCH_SECONDS[$label]}" "$runs" >&2
}

# bench_ratio NAME ANCHOR_LABEL OURS_LABEL TARGET: print the RESULT line,
# ratio = anchor seconds / our seconds (higher is better for us).
bench_ratio() {
	local name=$1 anchor=${BENCH_SECONDS[$2]} ours=${BENCH_SECONDS[$3]} target=$4
	local ratio verdict
	ratio=$(echo "$anchor / $ours" | bc -l)
	verdict=MISS
	if (($(echo "$ratio >= $target" | bc -l))); then verdict=PASS; fi
	printf 'RESULT %s: ours %.3fs, anchor %.3fs, ratio %.2f (target >= %s) %s\n' \
		"$name" "$ours" "$anchor" "$ratio" "$target" "$verdict"
}
