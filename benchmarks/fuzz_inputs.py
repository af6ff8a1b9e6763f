"""The hostile-input fuzz campaign at full size: seeded mutations of every kind of file cdcompress reads.

Prints the counts table of docs/reliability.md (kind, cases, one-line errors, correct results, failures)
and every failure's case and reason. ``tests/test_fuzz.py`` runs the same campaign (tests/fuzzing.py) smaller.

    python benchmarks/fuzz_inputs.py                 # the table in docs/reliability.md (--cases 400, seed 0)
    python benchmarks/fuzz_inputs.py --cases 50 --kinds image,recipe
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from fuzzing import KINDS, format_table, run_campaign  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=400, help="cases per kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {', '.join(KINDS)}")
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        parser.error(f"unknown kinds {unknown}; choose from {', '.join(KINDS)}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cdcompress-fuzz-") as work:
        results = run_campaign(Path(work), {k: args.cases for k in kinds}, seed=args.seed)
    print(f"fuzz campaign, seed {args.seed}, {datetime.date.today()}, {time.perf_counter() - start:.0f} s\n")
    print(format_table(results))
    failures = [f for counts in results.values() for f in counts.failures]
    for failure in failures:
        print(f"FAIL {failure.kind} {failure.case}: {failure.detail}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
