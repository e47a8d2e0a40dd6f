"""python -m bench NAME [options]: run one benchmark; it prints its figures
last, as one key=value line. `python -m bench` lists them."""

import importlib
import sys

BENCHMARKS = {
    "quota": "utilisation of a vendor rate limit with 1, 2 and 4 worker processes",
    "overhead": "engine end to end vs a plain asyncio + httpx loop, same concurrency",
    "plan": "planning a 100k and a 1M row CSV: rows/s and peak memory, SQLite and PostgreSQL",
    "query": "progress and failed-items queries on a 1M item job: p50/p99",
    "send": "a mass send to 100k recipients through a batch endpoint",
    "api": "the HTTP API's progress and failures requests on a 1M item job: p50/p99; --concurrent: 50 pollers",
    "scale": "one 10M item job on PostgreSQL: producer peak, planning rows/s, progress p99, items/s first/last tenth",
    "run": "a whole migration run (accounts to verify) at set rates: wall time over calls/rate",
    "schedule": "1,000 one-off schedules due within a minute, two schedulers: lag to the vendor, fires each",
    "bridge": "the cut-over bridge both ways at 200 and 1,000 messages/s, and beside a mass send: lag, acks, loss",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BENCHMARKS:
        print("usage: python -m bench NAME [--help]\n")
        for name, what in BENCHMARKS.items():
            print(f"  {name:9} {what}")
        return 2
    module = importlib.import_module(f"bench.{argv[0]}")
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
