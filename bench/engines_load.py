"""Load for bench/engines.sh: the same chat request, straight to an engine
and through the gateway, interleaved so that load from elsewhere hits both
alike. Prints one JSON line per path: latencies (ms) and throughput.

  python engines_load.py --body FILE --direct URL --gateway URL --token FILE \
      --requests N --concurrency C
"""

import argparse
import json
import statistics
import threading
import time

import httpx


def one(client, url, body, headers):
    started = time.perf_counter()
    r = client.post(url, content=body, headers=headers)
    r.raise_for_status()
    return (time.perf_counter() - started) * 1000


def latencies(urls, body, headers, n):
    """n requests per path, one at a time, alternating the paths."""
    out = {name: [] for name in urls}
    with httpx.Client(timeout=120) as client:
        for name, url in urls.items():  # warm the connections and the model
            one(client, url, body, headers[name])
        for _ in range(n):
            for name, url in urls.items():
                out[name].append(one(client, url, body, headers[name]))
    return out


def throughput(url, body, headers, n, concurrency):
    """n requests with `concurrency` clients; requests per second."""
    left = [n]
    lock = threading.Lock()

    def worker():
        with httpx.Client(timeout=120) as client:
            while True:
                with lock:
                    if left[0] == 0:
                        return
                    left[0] -= 1
                one(client, url, body, headers)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return n / (time.perf_counter() - started)


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--body", required=True)
    parser.add_argument("--path", default="/v1/chat/completions")
    parser.add_argument("--direct", required=True)
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    body = open(args.body, "rb").read()
    token = open(args.token).read().strip()
    json_type = {"content-type": "application/json"}
    urls = {"direct": args.direct + args.path, "gateway": args.gateway + args.path}
    headers = {"direct": json_type, "gateway": {**json_type, "authorization": f"Bearer {token}"}}
    lat = latencies(urls, body, headers, args.requests)
    rps = {}
    for name in ("direct", "gateway", "direct", "gateway"):
        rps.setdefault(name, []).append(
            throughput(urls[name], body, headers[name], args.requests, args.concurrency)
        )
    for name in urls:
        print(
            json.dumps(
                {
                    "path": name,
                    "p50": statistics.median(lat[name]),
                    "p99": pct(lat[name], 99),
                    "rps": statistics.median(rps[name]),
                    "added": [g - d for g, d in zip(lat["gateway"], lat["direct"])]
                    if name == "gateway"
                    else None,
                }
            )
        )


if __name__ == "__main__":
    main()
