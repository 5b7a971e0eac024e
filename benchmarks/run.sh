#!/usr/bin/env bash
# Run every benchmark section and save the Markdown output under benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
out="benchmarks/results/$(date -u +%Y-%m-%d).md"
{
  echo "<!-- produced by benchmarks/run.sh on $(date -u +%Y-%m-%dT%H:%MZ); load average: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a) -->"
  python -m unstall bench "$@"
} | tee "$out"
echo "saved to $out" >&2
