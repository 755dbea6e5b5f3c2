"""``python -m bench [--quick | audit | events | fairness | burst | cluster | licence |
keys | federation | adapters | cases | supervision | soak | profile]``:
run the benchmark.

``--quick`` runs the full run's phases and the licence phases in short windows on small
data (``bench._config.quick``), in about three minutes.

With no argument, every phase: ``bench.foundation`` and ``bench.sharing`` against a node,
then the access-log phases of ``bench.audit`` in this process, then the change-events
phases of ``bench.events``, then ``bench.fairness`` and ``bench.burst``, each on nodes of
their own; one results file. With ``audit``, ``events``, ``fairness`` or ``burst``, only
those phases (their own results file). ``cluster`` (not part of the full run) measures
several nodes on one PostgreSQL and subscriber failover (``bench.cluster``); ``cases``
(not part of it either) case transitions, the overdue report and the progress page
(``bench.cases``); ``supervision`` (not part of it either) the supervision report over
1,000,000 cases (``bench.supervision``); ``soak`` (not part of it either) a mixed load
of good and bad calls for minutes, round after round (``bench.soak``).
"""

from __future__ import annotations

import sys

from bench import (
    adapters,
    audit,
    burst,
    cases,
    cluster,
    events,
    fairness,
    federation,
    foundation,
    keys,
    licence,
    profile,
    soak,
    supervision,
)

USAGE = """usage: python -m bench [--quick | audit | events | fairness | burst | cluster |
                          licence | keys | federation | adapters | cases |
                          supervision | soak | profile]

  (no argument)  every phase: foundation, sharing, the access log's, change events,
                 fairness and burst
  --quick        the same phases and the licence ones, in short windows on small data
                 (about 3 minutes; bench._config.quick): to see what a change does
  audit          only the access-log phases (in process, on their own PostgreSQL)
  events         only the change-events phases (embedded and Kafka mode, a node each;
                 BENCH_EVENTS_SECONDS, BENCH_EVENTS_MAX_SECONDS, BENCH_EVENTS_BACKLOG,
                 BENCH_EVENTS_RATE, BENCH_EVENTS_WARMUP_SECONDS and BENCH_EVENTS_MODES
                 shorten or narrow a run)
  fairness       tax's 64-caller audited query alone, then while samr bulk-loads
                 (StreamRecords) and issues licences at full speed, on the node's default
                 per-department limits; p99 with samr beside p99 alone
                 (BENCH_FAIRNESS_SECONDS, BENCH_FAIRNESS_RECORDS, BENCH_FAIRNESS_ISSUERS)
  burst          samr's Issue calls from 16, 64 and 256 callers beside one caller, and the
                 longest wait of tax's calls meanwhile; samr's own concurrency limit raised
                 to 256 (BENCH_BURST_LEVELS, BENCH_BURST_MIN_CALLS,
                 BENCH_BURST_BASELINE_CALLS)
  cluster        1, 2 and 3 nodes on one PostgreSQL (audited query throughput) and a
                 subscriber's failover when its node is killed; not in the full run
                 (BENCH_CLUSTER_SECONDS, BENCH_CLUSTER_ROUNDS, BENCH_CLUSTER_KAFKA=1)
  licence        licence issue, offline QR and SD-JWT verify, PDF render + seal, in
                 process, each beside a raw baseline (BENCH_LICENCE_ISSUE,
                 BENCH_LICENCE_SECONDS, BENCH_LICENCE_PDFS); not in the full run yet
  keys           signs per second with keys in memory, in a SoftHSM2 token and SM2 key
                 files, SM2 verify, PAdES seals and licence issuance with the seal in the
                 token, and a witness cosignature round trip on loopback, each beside a
                 baseline; not in the full run (BENCH_KEYS_SECONDS, BENCH_KEYS_ISSUE,
                 BENCH_KEYS_PDFS, BENCH_KEYS_WITNESS_ROUNDS)
  federation     a query forwarded to a peer exchange (two tongban serve, linked with
                 tongban peer add) beside the same query asked locally, 64 callers each;
                 not in the full run (BENCH_FEDERATION_RECORDS, BENCH_FEDERATION_SECONDS)
  adapters       a legacy table's snapshot into the exchange through an adapter (beside
                 an asyncpg COPY of the same rows) and legacy change -> another legacy
                 system's latency; not in the full run (BENCH_ADAPTERS_ROWS, default
                 1,000,000; BENCH_ADAPTERS_CHANGES; BENCH_ADAPTERS_POLL)
  cases          case transitions at 64 callers (beside the audited query), the overdue
                 report over 1,000,000 open cases (beside a count of them) and the
                 applicant's progress page p99 (beside a primary-key SELECT); not in the
                 full run (BENCH_CASES_ROWS, default 1,000,000; BENCH_CASES_SECONDS;
                 BENCH_CASES_LOOKUPS; BENCH_CASES_PROFILE=DIR)
  supervision    the supervision report (overdue, within-limit share, 即办件率, 全程网办率,
                 免提交率 per department and month) over 1,000,000 cases beside a GROUP BY
                 of the same rows; not in the full run (BENCH_SUPERVISION_ROWS)
  soak           64 callers without a break for 10 rounds of 30 s, of every ten calls six
                 audited queries, three bad ones (a key that is no USCC, a dataset that
                 does not exist, an unknown field) and one change to a record, which a
                 subscription receives; each answer checked, every change delivered in
                 order, and per round the rate, p99, slowest call and the node's memory,
                 files and threads; the last round beside the first; not in the full run
                 (BENCH_SOAK_ROUNDS, BENCH_SOAK_SECONDS)
  profile        py-spy on the node under the audited 1-key query (64 callers): a flame
                 graph (docs/profiles/audited-query-node.svg, or BENCH_PROFILE_SVG) and
                 its collapsed stacks, and the shares by thread, stage and function;
                 BENCH_PROFILE_SECONDS (default 10); needs root or ptrace_scope 0"""


def main(argv: list[str]) -> int:
    if not argv:
        return foundation.main(with_audit=True, with_events=True, with_limits=True)
    if argv == ["--quick"]:
        status = foundation.main(with_audit=True, with_events=True, with_limits=True, quick=True)
        if status == 130:
            return status
        print()
        return max(status, licence.main(quick=True))
    if argv == ["audit"]:
        return audit.main()
    if argv == ["events"]:
        return events.main()
    if argv == ["fairness"]:
        return fairness.main()
    if argv == ["burst"]:
        return burst.main()
    if argv == ["cluster"]:
        return cluster.main()
    if argv == ["licence"]:
        return licence.main()
    if argv == ["federation"]:
        return federation.main()
    if argv == ["keys"]:
        return keys.main()
    if argv == ["adapters"]:
        return adapters.main()
    if argv == ["cases"]:
        return cases.main()
    if argv == ["supervision"]:
        return supervision.main()
    if argv == ["soak"]:
        return soak.main()
    if argv == ["profile"]:
        return profile.main()
    if argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
