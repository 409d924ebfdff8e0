# Sourced by the pipeline scripts: `step NAME COMMAND...` runs COMMAND, echoes it, and
# appends a row `| NAME | `COMMAND` | seconds |` to the Markdown table in "$LOG" (the
# script's commands.md), so every committed figure names the command and time of its step.
# A failing COMMAND stops the script (the callers run under `set -e`) and logs no row.
step() {  # step NAME COMMAND... : run, time, log
  local name=$1; shift
  local t0=$SECONDS
  echo ">>> $name: $*"
  "$@"
  echo "| $name | \`$*\` | $((SECONDS - t0)) |" >> "$LOG"
}

start_log() {  # start_log TITLE INVOCATION [NOTE] : the commands.md header, written once per results folder
  [ -f "$LOG" ] && return 0
  {
    echo "# $1"
    echo
    echo "invocation: \`$2\`; started $(date -u +%FT%TZ) on $(nproc --all) cores; commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo
    if [ -n "${3:-}" ]; then echo "$3"; echo; fi
    echo "| step | command | wall time (s) |"
    echo "| --- | --- | ---: |"
  } > "$LOG"
}
