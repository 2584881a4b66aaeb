#!/usr/bin/env bash
# Train on GPUS processes of this machine (or NNODES machines) with torchrun:
#   bash tools/dist_train.sh CONFIG GPUS [tools/train.py options...]
# Environment: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1),
# PORT (29500), PYTHON (python).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG GPUS [train.py options...]" >&2
  exit 2
fi
CONFIG=$1
GPUS=$2
shift 2
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m torch.distributed.run \
  --nnodes="${NNODES:-1}" \
  --node_rank="${NODE_RANK:-0}" \
  --master_addr="${MASTER_ADDR:-127.0.0.1}" \
  --master_port="${PORT:-29500}" \
  --nproc_per_node="$GPUS" \
  tools/train.py "$CONFIG" --launcher pytorch "$@"
