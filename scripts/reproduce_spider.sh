#!/usr/bin/env bash
# Spider (execution accuracy on the dev databases): see scripts/reproduce.sh.
TASK=spider exec "$(dirname "$0")/reproduce.sh" "$@"
