#!/usr/bin/env bash
# Distributed training with torchrun; see dist_launch.sh for NPROC, NNODES, NODE_RANK, MASTER_ADDR/PORT.
#   NPROC=4 scripts/dist_train.sh options/train/OPT.yml --auto_resume
exec "$(dirname "$0")/dist_launch.sh" train "$@"
