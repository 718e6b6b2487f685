#!/usr/bin/env python3
"""Bounded load test for `vlm serve` on loopback: N requests, C concurrent, then it stops.

    vlm serve --model DIR --port 8080 --max-queue 64 &
    python3 Benchmarks/serve_load.py --port 8080 --requests 200 --concurrency 16 --pid $!

Standard library only. Prints requests/s, p50/p99 latency, status counts and (with --pid) the server's RSS
before and after. Only 127.0.0.1 / localhost / ::1 are accepted as targets.
"""
import argparse
import json
import statistics
import sys
import threading
import time
import http.client


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--pid", type=int, default=None, help="server pid, for RSS before/after")
    ap.add_argument("--timeout", type=float, default=120.0, help="per-request timeout (s)")
    ap.add_argument("--deadline", type=float, default=600.0, help="stop issuing requests after this many seconds")
    args = ap.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("loopback targets only")
    args.requests = max(1, min(args.requests, 10_000))
    args.concurrency = max(1, min(args.concurrency, 256))

    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = "Bearer " + args.api_key
    lock = threading.Lock()
    next_index = [0]
    latencies, statuses, errors = [], {}, []
    start = time.monotonic()

    def worker():
        conn = None
        while True:
            with lock:
                if next_index[0] >= args.requests or time.monotonic() - start > args.deadline:
                    return
                i = next_index[0]
                next_index[0] += 1
            body = json.dumps({
                "model": "any", "max_tokens": args.max_tokens, "temperature": 0.7, "seed": i, "stream": args.stream,
                "messages": [{"role": "user", "content": f"Request {i % 8}: write one sentence about the sea."}],
            })
            t0 = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(args.host, args.port, timeout=args.timeout)
                conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                status = resp.status
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close(); conn = None
            except Exception as e:  # noqa: BLE001
                status = "exception"
                with lock:
                    errors.append(repr(e))
                if conn is not None:
                    conn.close()
                conn = None
            dt = time.monotonic() - t0
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latencies.append(dt)

    rss_before = rss_kib(args.pid) if args.pid else None
    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    rss_after = rss_kib(args.pid) if args.pid else None
    lat = sorted(latencies)

    def pct(p):
        return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))] if lat else float("nan")

    report = {
        "requests": sum(statuses.values()), "concurrency": args.concurrency, "elapsed_s": round(elapsed, 2),
        "ok": len(lat), "requests_per_s": round(len(lat) / elapsed, 2) if elapsed > 0 else 0,
        "p50_ms": round(pct(50) * 1000, 1), "p99_ms": round(pct(99) * 1000, 1),
        "mean_ms": round(statistics.mean(lat) * 1000, 1) if lat else None,
        "statuses": {str(k): v for k, v in statuses.items()}, "errors": errors[:5],
        "rss_before_kib": rss_before, "rss_after_kib": rss_after,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
