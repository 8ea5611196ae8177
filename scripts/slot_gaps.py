#!/usr/bin/env python3
"""Report how long worker slots sat idle between trials in a `tunefleet run --json` result.

Reads the JSON on stdin. For each (worker, slot), attempts are ordered by start time, and a gap
is the time from one attempt's end to the next attempt's start on that slot, both as the
coordinator recorded them (milliseconds since the Unix epoch).
"""

import json
import statistics
import sys


def main() -> int:
    result = json.load(sys.stdin)
    by_slot: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for trial in result["leaderboard"]:
        for attempt in trial["attempts"]:
            key = (attempt["worker_id"], attempt["slot"])
            by_slot.setdefault(key, []).append((attempt["started_at_ms"], attempt["ended_at_ms"]))
    gaps = []
    for spans in by_slot.values():
        spans.sort()
        gaps += [start - previous_end for (_, previous_end), (start, _) in zip(spans, spans[1:])]
    if not gaps:
        print("no slot ran more than one attempt")
        return 1
    print(
        f"slot gaps over {len(gaps)} trial changes: min {min(gaps)} ms, "
        f"median {statistics.median(gaps)} ms, max {max(gaps)} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
