#!/usr/bin/env bash
# Evaluate a checkpoint on GPUS processes of this machine with torchrun:
#   bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [tools/test.py options...]
# Environment: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1),
# PORT (29500), PYTHON (python).
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 CONFIG CHECKPOINT GPUS [test.py options...]" >&2
  exit 2
fi
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
shift 3
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m torch.distributed.run \
  --nnodes="${NNODES:-1}" \
  --node_rank="${NODE_RANK:-0}" \
  --master_addr="${MASTER_ADDR:-127.0.0.1}" \
  --master_port="${PORT:-29500}" \
  --nproc_per_node="$GPUS" \
  tools/test.py "$CONFIG" "$CHECKPOINT" --launcher pytorch "$@"
