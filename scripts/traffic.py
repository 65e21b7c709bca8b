"""Synthetic HTTP traffic through a load balancer, bounded in time and count.

    traffic.py URL [--host catalog] [--seconds 20] [--max-requests 20000]
                   [--rate 50] [--concurrency 2] [--path /items] [--out result.json]

Loopback only: refuses any URL whose host is not in 127.0.0.0/8 (or
localhost). Prints (and writes with --out) a JSON summary: requests, ok,
errors (5xx, connection failures), status counts, error samples.
"""
import argparse
import collections
import ipaddress
import json
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request


def loopback_only(url):
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host) in ipaddress.ip_network("127.0.0.0/8"):
            return
    except ValueError:
        pass
    sys.exit(f"traffic.py: refusing {url}: only loopback (127.0.0.0/8) targets are allowed")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--host", help="Host header (the artifact's name routes to its backend)")
    ap.add_argument("--path", default="/healthz")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--max-requests", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--rate", type=float, default=50.0, help="requests per second in all (0: as fast as possible)")
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if (not 0 < args.seconds <= 3600 or not 0 < args.max_requests <= 1_000_000 or not 0 < args.concurrency <= 32
            or not 0 <= args.rate <= 10_000):
        sys.exit("traffic.py: --seconds (0,3600], --max-requests (0,1e6], --concurrency (0,32], --rate [0,10000]")
    url = urllib.parse.urljoin(args.url, args.path)
    loopback_only(url)
    headers = {"Host": args.host} if args.host else {}
    counts = collections.Counter()
    samples = []
    lock = threading.Lock()
    deadline = [time.monotonic() + args.seconds]
    sent = [0]

    def stop(_signum, _frame):  # SIGTERM / SIGINT: finish in-flight requests, then report
        deadline[0] = 0

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    start = time.monotonic()

    def worker():
        while time.monotonic() < deadline[0]:
            with lock:
                if sent[0] >= args.max_requests:
                    return
                sent[0] += 1
                due = start + sent[0] / args.rate if args.rate else 0
            if due:
                time.sleep(max(0.0, due - time.monotonic()))
            req = urllib.request.Request(url, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=args.timeout) as resp:
                    resp.read()
                    key = str(resp.status)
            except urllib.error.HTTPError as exc:
                key = str(exc.code)
            except OSError as exc:
                key = "connection error"
                with lock:
                    if len(samples) < 5:
                        samples.append(f"{type(exc).__name__}: {exc}")
            with lock:
                counts[key] += 1

    threads = [threading.Thread(target=worker, daemon=True) for _i in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():  # short joins, so the signal handler runs promptly
            t.join(0.2)
    total = sum(counts.values())
    errors = sum(n for k, n in counts.items() if not k.isdigit() or int(k) >= 500)
    summary = {"url": url, "requests": total, "ok": counts.get("200", 0), "errors": errors,
               "statuses": dict(counts), "error_samples": samples}
    text = json.dumps(summary, indent=2)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
