#!/usr/bin/env bash
# torchrun launcher shared by dist_train.sh and dist_test.sh:
#   scripts/dist_launch.sh train|test OPT.yml [extra CLI args, passed through]
# Environment (defaults in brackets):
#   NPROC        processes on this node [auto: one per GPU, else one per CPU core]
#   NNODES       number of nodes [1]
#   NODE_RANK    this node's index, 0..NNODES-1 [0]; rank 0 (the only writer) runs on node 0
#   MASTER_ADDR  address of node 0, reachable from every node [127.0.0.1]
#   MASTER_PORT  free TCP port on node 0 [29500]
#   RDZV_BACKEND static (fixed NODE_RANK) or c10d (elastic; NODE_RANK ignored, ranks by hostname) [static]
#   RDZV_ID      job id shared by the nodes of one c10d run [basicsr_iln]
set -euo pipefail
if [ $# -lt 2 ] || { [ "$1" != train ] && [ "$1" != test ]; }; then
    echo "usage: $0 train|test OPT.yml [args...]" >&2
    exit 2
fi
ENTRY=$1
OPT=$2
shift 2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
exec python -m torch.distributed.run \
    --nproc_per_node="${NPROC:-auto}" --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
    --rdzv_backend="${RDZV_BACKEND:-static}" --rdzv_id="${RDZV_ID:-basicsr_iln}" \
    --rdzv_endpoint="${MASTER_ADDR:-127.0.0.1}:${MASTER_PORT:-29500}" \
    "$ROOT/basicsr_iln/$ENTRY.py" -opt "$OPT" --launcher pytorch "$@"
