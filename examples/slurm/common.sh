# Sourced by every stage script. Settings come from the environment (sbatch exports the
# submitting shell's environment by default):
#   KNN       how to run the knn CLI   (default: deno run --allow-all <repo>/cli.ts)
#   KNN_OUT   the datastore directory, on a filesystem every node shares (required)
#   KNN_ARGS  the datastore's settings, the same for every stage, e.g.
#             "--config knnlm.jsonc --max-tokens 200000" (settings only: every stage takes them)
# The shard (I of N) of gather and add comes from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT.
set -euo pipefail
REPO=${KNN_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
KNN=${KNN:-deno run --allow-all "$REPO/cli.ts"}
: "${KNN_OUT:?set KNN_OUT to the datastore directory (on a shared filesystem)}"
read -r -a EXTRA <<<"${KNN_ARGS:-}"
