"""``python -m bench [audit]``: run the benchmark.

With no argument, every phase: ``bench.foundation`` and ``bench.sharing`` against a node,
then the access-log phases of ``bench.audit`` in this process; one results file. With
``audit``, only the access-log phases (their own results file).
"""

from __future__ import annotations

import sys

from bench import audit, foundation

USAGE = """usage: python -m bench [audit]

  (no argument)  every phase: foundation, sharing, then the access log's
  audit          only the access-log phases (in process, on their own PostgreSQL)"""


def main(argv: list[str]) -> int:
    if not argv:
        return foundation.main(with_audit=True)
    if argv == ["audit"]:
        return audit.main()
    if argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
