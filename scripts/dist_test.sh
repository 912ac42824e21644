#!/usr/bin/env bash
# Distributed testing with torchrun (test sets split across processes, metrics gathered); see dist_launch.sh.
#   NPROC=4 scripts/dist_test.sh options/test/OPT.yml
exec "$(dirname "$0")/dist_launch.sh" test "$@"
