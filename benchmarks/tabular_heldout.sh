#!/usr/bin/env bash
# The pre-registered held-out run of the tabular benchmark (nfm/tabular/registration.py).
#
#   PYTHON=/path/to/python bash benchmarks/tabular_heldout.sh [OUTPUT] [TIME_LIMIT_S] [MAX_TRAIN]
#
# Runs, from a snapshot of the source tree taken at the start (so edits made while it runs
# cannot change it), two parts in parallel, one process each, one thread per fit:
#   core: every held-out method except the two networks, seeds 3 4 5;
#   nn:   pytabkit RealMLP and TabM, seed 3 only (they cost ~100x a kernel fit on CPU).
# Both use protocol "refit", smallest datasets first, and stop starting new units after
# TIME_LIMIT_S seconds. Then merges the parts into OUTPUT/results.csv and writes the summary.
# Machine, date, load, the command and the git state go to OUTPUT/run_info.txt.
set -euo pipefail
OUTPUT=${1:-benchmarks/results/tabular/heldout}
TIME_LIMIT=${2:-3300}
MAX_TRAIN=${3:-600}
PYTHON=${PYTHON:-python}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SNAPSHOT=$(mktemp -d /tmp/nfm-heldout-src.XXXXXX)
cp -r "$ROOT/nfm" "$ROOT/benchmarks" "$SNAPSHOT/"
mkdir -p "$OUTPUT/core" "$OUTPUT/nn"
{
  echo "command: PYTHON=$PYTHON bash benchmarks/tabular_heldout.sh $OUTPUT $TIME_LIMIT $MAX_TRAIN"
  echo "start_utc: $(date -u '+%Y-%m-%d %H:%M:%S')"
  echo "nproc: $(nproc)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "uptime_at_start: $(uptime)"
  echo "git_head: $(git -C "$ROOT" rev-parse HEAD)"
  echo "git_diff_stat_nfm_rfm:"
  git -C "$ROOT" diff --stat -- nfm/rfm nfm/solvers nfm/kernels | sed 's/^/  /'
  echo "snapshot: $SNAPSHOT (source tree copied at start; the run imports nfm from it)"
  echo "snapshot_sha256_nfm_rfm: $(cat "$SNAPSHOT"/nfm/rfm/*.py | sha256sum | cut -c1-16)"
} > "$OUTPUT/run_info.txt"
COMMON=(--heldout --max-train "$MAX_TRAIN" --max-test 2000 --threads 1 --jobs 1
        --time-limit "$TIME_LIMIT" --no-summary)
# An editable install of nfm answers imports before PYTHONPATH does: the bootstrap drops its
# finder and puts the snapshot first, then runs benchmarks/tabular.py in the same process
# (--jobs 1 spawns no workers).
cat > "$SNAPSHOT/run_snapshot.py" <<PY
import runpy, sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path.insert(0, "$SNAPSHOT")
import nfm
assert nfm.__file__.startswith("$SNAPSHOT"), nfm.__file__
sys.argv = ["$SNAPSHOT/benchmarks/tabular.py", *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
PY
"$PYTHON" "$SNAPSHOT/run_snapshot.py" --list > /dev/null
"$PYTHON" "$SNAPSHOT/run_snapshot.py" "${COMMON[@]}" --output "$OUTPUT/core" \
  --methods rfm rfm-default xrfm catboost-es xgboost-es lightgbm-es random-forest svm-rbf \
  laplace-krr > "$OUTPUT/core/log.txt" 2>&1 &
CORE=$!
"$PYTHON" "$SNAPSHOT/run_snapshot.py" "${COMMON[@]}" --output "$OUTPUT/nn" \
  --methods realmlp tabm --seeds 3 > "$OUTPUT/nn/log.txt" 2>&1 &
NN=$!
wait $CORE $NN || true
{
  echo "end_utc: $(date -u '+%Y-%m-%d %H:%M:%S')"
  echo "uptime_at_end: $(uptime)"
} >> "$OUTPUT/run_info.txt"
# the summary reads OUTPUT/*/results.csv; it runs with the working tree's code
"$PYTHON" "$ROOT/benchmarks/tabular.py" --summarize-only --output "$OUTPUT" \
  > "$OUTPUT/summary_log.txt" 2>&1 || echo "summary failed, see $OUTPUT/summary_log.txt"
