#!/usr/bin/env bash
# Submits the four stages as Slurm jobs chained with --dependency=afterok:
#   gather (array of N) → train (1) → add (array of N) → merge (1)
# Usage: KNN_OUT=/shared/ds [SHARDS=4] [KNN_ARGS="..."] examples/slurm/submit.sh [--wait]
# With --wait, returns when merge has finished (its exit status is the pipeline's). A failed
# stage cancels the ones after it (afterok); resubmitting resumes: finished shards are skipped.
# tests/slurm_test.ts runs this on a one-node cluster (tests/slurm/local_cluster.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export KNN_REPO=${KNN_REPO:-$(cd "$here/../.." && pwd)}
: "${KNN_OUT:?set KNN_OUT to the datastore directory (on a shared filesystem)}"
export KNN_OUT
n=${SHARDS:-4}
logs=${KNN_LOGS:-$KNN_OUT/slurm-logs}
mkdir -p "$logs"
sb=(sbatch --parsable --chdir="$logs" --export=ALL)
g=$("${sb[@]}" --array=0-$((n - 1)) "$here/gather.sbatch")
t=$("${sb[@]}" --dependency=afterok:"$g" "$here/train.sbatch")
a=$("${sb[@]}" --array=0-$((n - 1)) --dependency=afterok:"$t" "$here/add.sbatch")
echo "gather=$g train=$t add=$a" >&2
"${sb[@]}" --dependency=afterok:"$a" "$@" "$here/merge.sbatch"
