#!/usr/bin/env bash
# The benchmark harness: runs the load scenarios in release from a persistent target directory
# and writes their results into BENCHMARKS.md (between `<!-- results:NAME -->` markers, with the
# date, the machine and the command), so every figure there has the command that made it.
#
#   benches/run.sh                   # store, ingest (HTTP + MQTT via Mosquitto), alerts, query
#   benches/run.sh alerts query      # some of them
#   benches/run.sh normalise         # criterion micro-benchmarks (raw criterion output)
#
# Needs what the tests need (scripts/setup-test-deps.sh: Mosquitto, the Python venv with DuckDB).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CAREWATCH_BENCH_TARGET:-$HOME/.cache/carewatch-bench-target}"
sections=("$@")
[ ${#sections[@]} -gt 0 ] || sections=(store ingest alerts query)
bash scripts/setup-test-deps.sh >/dev/null
export PATH="${CAREWATCH_VENV:-$HOME/.cache/carewatch-venv}/bin:$PATH"

machine="$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), \
$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), \
$(rustc --version | cut -d' ' -f1-2), commit $(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes')"
echo "bench: $machine"
for s in "${sections[@]}"; do
  cmd="cargo bench -p carewatch-benches --bench $s"
  echo "bench: $cmd"
  out="$(mktemp)"
  $cmd 2>/dev/null | tee "$out"
  python3 - "$s" "$out" "$cmd" "$machine" <<'PY'
import datetime, re, sys
name, out, cmd, machine = sys.argv[1:5]
body = open(out).read().strip()
if name == "normalise":
    body = "```text\n" + "\n".join(l for l in body.splitlines() if l.strip()) + "\n```"
text = open("BENCHMARKS.md").read()
block = (f"<!-- results:{name} -->\nMeasured {datetime.date.today()} with `{cmd}` "
         f"(`benches/run.sh {name}`) on {machine}:\n\n{body}\n<!-- /results:{name} -->")
pat = re.compile(rf"<!-- results:{name} -->.*?<!-- /results:{name} -->", re.S)
if pat.search(text):
    text = pat.sub(lambda _: block, text)
else:
    text = text.rstrip() + "\n\n" + block + "\n"
open("BENCHMARKS.md", "w").write(text)
PY
  rm -f "$out"
done
echo "bench: BENCHMARKS.md updated (${sections[*]})"
