#!/usr/bin/env bash
# Writes the seed corpora fuzz/corpus/{results,markers}/ from the fixtures (files named by SHA-1 of their
# content, as libFuzzer names its own, so identical seeds collapse). Existing corpus files are kept: run it on
# an empty checkout to reproduce the seeds, or any time to add new fixtures to a grown corpus.
# Usage (from anywhere): fuzz/seed-corpus.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
fx="$root/fixtures"
out="$root/fuzz/corpus"
mkdir -p "$out/results" "$out/markers"

# put DIR < bytes: stores stdin as DIR/<sha1>.
put() {
    local tmp sum
    tmp="$(mktemp)"
    cat >"$tmp"
    sum="$(sha1sum "$tmp" | cut -d' ' -f1)"
    mv "$tmp" "$1/$sum"
    chmod 644 "$1/$sum"
}

# join FILE...: the files separated by NUL bytes (the results target's file separator), at most four.
join() {
    local first=1 f
    for f in "${@:1:4}"; do
        if [ "$first" = 0 ]; then printf '\0'; fi
        first=0
        cat "$f"
    done
}

# results: every worker file alone, ...
while IFS= read -r -d '' f; do
    put "$out/results" <"$f"
done < <(find "$fx/results/lb1.0" "$fx/results/lb2.0" -path '*/inputs/*.json' -print0
         find "$fx/results/real" -name '*.json' -print0
         find "$fx/volumes" -path '*/agent/agent*/agent_results.json' -print0)
# ... every golden case's inputs together, in the order its case.json passes them to the merge, ...
for case in "$fx"/results/lb*/*/; do
    [ -f "$case/case.json" ] && [ -d "$case/inputs" ] || continue
    mapfile -t files < <(python3 -c 'import json,sys; print("\n".join(json.load(open(sys.argv[1]))["merge_argv_order"]))' \
        "$case/case.json" | while IFS= read -r n; do [ -f "$case/inputs/$n" ] && echo "$case/inputs/$n"; done)
    [ "${#files[@]}" -gt 1 ] && join "${files[@]}" | put "$out/results"
done
# ... and every volume's agent files together (agent1..agent4).
for vol in "$fx"/volumes/*/; do
    mapfile -t files < <(find "$vol/agent" -name agent_results.json | sort)
    [ "${#files[@]}" -gt 1 ] && join "${files[@]}" | put "$out/results"
done

# markers: every status folder listing (one name per line), every name in them alone, and hand-written names.
for dir in "$fx"/volumes/*/containers-status/; do
    ls -A "$dir" | put "$out/markers"
    for n in $(ls -A "$dir"); do printf '%s' "$n" | put "$out/markers"; done
done
for n in simulator-1.crash0 agent-12.start3 simulation.cancel simulation-2.cancel logcopy.done agent-1.failed \
    simulator-4294967295.start4294967295 agent-4294967296.start0 agent-01.done agent-1.start00 agent-+1.done \
    agent-1.done.tmp uploader-1.done Agent-1.done agent-.done agent-1. simulation-0.cancel simulation.cancel.tmp \
    .agent-1.done agent-1.crash agent-1.start-1 simulator-1.failed agent-0.start0; do
    printf '%s' "$n" | put "$out/markers"
done
# A listing that needs the attempt rule: an untraced start, a peer crash, stale markers, a cancel and noise.
printf '%s\n' agent-2.start0 agent-2.crash0 agent-2.start1 simulator-2.crash0 simulator-2.start1 \
    simulator-2.start2 agent-3.failed simulation-3.cancel logcopy.done agent-2.done.tmp | put "$out/markers"
printf '%s\n' simulator-7.crash4294967295 agent-7.start4294967295 agent-7.crash4294967294 | put "$out/markers"

echo "results: $(ls "$out/results" | wc -l) files, $(du -sb "$out/results" | cut -f1) bytes (with dirs)"
echo "markers: $(ls "$out/markers" | wc -l) files"
