#!/usr/bin/env bash
# GSM8K: see scripts/reproduce.sh for the sizes and the steps.
TASK=gsm8k exec "$(dirname "$0")/reproduce.sh" "$@"
