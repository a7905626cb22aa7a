"""Compare two results.json files, timing aside: every value must be equal except wall times
and memory (`seconds`, `merge_seconds`, `step_ms`, `peak_mib`, `memory`, `timing`).

How a change that should not change behaviour is checked (issue 20's redesign): run
`taskvec run --quick` before and after it, on the same machine, then

    python benchmarks/compare_results.py runs/quick-before/results.json runs/quick-after/results.json

It prints "identical (timing aside)" and exits 0, or lists the first 50 differing paths and
exits 1.
"""

from __future__ import annotations

import json
import sys
from typing import Any

TIMING = {"seconds", "merge_seconds", "step_ms", "peak_mib", "memory", "timing"}


def without_timing(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: without_timing(v) for k, v in data.items() if k not in TIMING}
    if isinstance(data, list):
        return [without_timing(v) for v in data]
    return data


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    if type(a) is not type(b):
        return [f"{path}: {a!r} != {b!r}"]
    if isinstance(a, dict):
        found = []
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                found.append(f"{path}.{key}: only in the {'second' if key not in a else 'first'} file")
            else:
                found += differences(a[key], b[key], f"{path}.{key}")
        return found
    if isinstance(a, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items != {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def main(first: str, second: str) -> int:
    with open(first) as f, open(second) as g:
        found = differences(without_timing(json.load(f)), without_timing(json.load(g)))
    print("\n".join(found[:50]) if found else "identical (timing aside)")
    return 1 if found else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} FIRST/results.json SECOND/results.json")
    sys.exit(main(sys.argv[1], sys.argv[2]))
