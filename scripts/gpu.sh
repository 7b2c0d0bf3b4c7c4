#!/usr/bin/env bash
# make gpu-status / make kill-gpu. kill ends only GPU processes owned by the current user.
set -uo pipefail
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "no nvidia-smi on this machine: no NVIDIA GPU to report on"; exit 0
fi
case "${1:-status}" in
  status)
    nvidia-smi --query-gpu=index,name,memory.used,memory.total,utilization.gpu --format=csv
    echo; echo "processes:"
    nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader || true ;;
  kill)
    me=$(id -un); mine=()
    while IFS=, read -r pid name mem; do
      pid=$(echo "$pid" | tr -d ' '); [ -z "$pid" ] && continue
      owner=$(ps -o user= -p "$pid" 2>/dev/null | tr -d ' ')
      if [ "$owner" = "$me" ]; then echo "will end: pid $pid ($name,$mem)"; mine+=("$pid")
      else echo "leaving: pid $pid ($name) owned by ${owner:-unknown}"; fi
    done < <(nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader)
    [ ${#mine[@]} -eq 0 ] && { echo "no GPU processes of user $me"; exit 0; }
    kill -TERM "${mine[@]}"; sleep 3
    for pid in "${mine[@]}"; do kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"; done
    echo "ended ${#mine[@]} process(es)" ;;
  *) echo "usage: gpu.sh status|kill" >&2; exit 2 ;;
esac
