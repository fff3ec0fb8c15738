"""Load test of `ssmkit serve`, on loopback only, bounded in requests and time.

    .venv/bin/python -m benchmarks.serve_load              # 8 clients, 1,000 sessions (~5 min on 2 cores)
    .venv/bin/python -m benchmarks.serve_load --quick      # 4 clients, 100 sessions (~1 min)

A random printable-byte model (Mamba-2, d_model 256, 4 layers by default) is saved and served by real
`ssmkit serve` processes started here on free 127.0.0.1 ports; the clients are asyncio tasks
streaming over HTTP (httpx). Phases:

  1. batching: 1 client, then N clients, each sending `--requests` streaming completions one after
     another (`--max-tokens` each), twice in turn; total tokens/s of N clients / of 1 client.
  2. prefix cache: the same 4,000-token prefix with a different short question each time, sent in
     turn to a server with the prefix cache and one without (`prefix_cache_mb=0`); time to first
     token, and the ratio of medians.
  3. sessions: `--sessions` sessions created, each continued for a turn by N clients, then all
     resumed for a second turn; the server's resident memory sampled as the count grows (idle
     sessions' states leave memory for the store: `session_cache_mb` is kept small on purpose).
  4. SIGKILL under load: N clients continue sessions; the server is killed mid-traffic, restarted on
     the same database, and every session must stand at its last turn a client saw completed (or
     one more, where the kill came after the commit and before the client read the end), then
     continue without error.

Every request's time to first token (TTFT) and inter-token latency (ITL) are recorded; errors are
counted, never retried. Results: a markdown table on stdout and benchmarks/results/serve_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

import httpx

from tests.serve.server_process import KEYS, ServerProcess, make_model_dir

RESULTS = os.path.join(os.path.dirname(__file__), "results")
KEY = KEYS[0]


# ---- measuring ------------------------------------------------------------------------------------
def memory_mb(pid: int) -> dict:
    """Resident memory of a process now (VmRSS) and at its peak so far (VmHWM), MiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line[:5]] = int(line.split()[1]) / 1024
    return {"rss_mb": round(out["VmRSS"], 1), "peak_rss_mb": round(out["VmHWM"], 1)}


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q / 100 * len(xs)))]


class Tally:
    """TTFTs, inter-token latencies, tokens and errors of a group of requests."""

    def __init__(self, name: str):
        self.name, self.ttft, self.itl, self.tokens, self.requests, self.errors = name, [], [], 0, 0, []
        self.t0 = time.perf_counter()
        self.wall = 0.0

    def close(self) -> Tally:
        self.wall = time.perf_counter() - self.t0
        return self

    def row(self, clients: int) -> dict:
        ms = lambda xs, q: round(1e3 * pct(xs, q), 1)  # noqa: E731
        return {
            "phase": self.name,
            "clients": clients,
            "requests": self.requests,
            "tokens": self.tokens,
            "wall_s": round(self.wall, 2),
            "tokens_per_s": round(self.tokens / self.wall, 1) if self.wall else 0.0,
            "ttft_p50_ms": ms(self.ttft, 50),
            "ttft_p99_ms": ms(self.ttft, 99),
            "itl_p50_ms": ms(self.itl, 50),
            "itl_p99_ms": ms(self.itl, 99),
            "errors": len(self.errors),
        }


async def stream(client: httpx.AsyncClient, path: str, body: dict, tally: Tally) -> bool:
    """One streaming request; records TTFT, ITL and tokens in `tally`. True if it ended with [DONE]."""
    t0 = time.perf_counter()
    first = last = None
    try:
        async with client.stream(
            "POST", path, json={**body, "stream": True, "stream_options": {"include_usage": True}}
        ) as r:
            if r.status_code != 200:
                await r.aread()
                tally.errors.append(f"{r.status_code}: {r.text[:200]}")
                return False
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    tally.requests += 1
                    return True
                obj = json.loads(line[6:])
                if "error" in obj:
                    tally.errors.append(obj["error"]["message"][:200])
                    return False
                if obj.get("usage"):
                    tally.tokens += obj["usage"]["completion_tokens"]
                choices = obj["choices"]
                piece = choices and (choices[0].get("text") or (choices[0].get("delta") or {}).get("content"))
                if piece:
                    now = time.perf_counter()
                    if first is None:
                        first = now
                        tally.ttft.append(now - t0)
                    else:
                        tally.itl.append(now - last)
                    last = now
    except (httpx.HTTPError, asyncio.CancelledError) as e:
        if isinstance(e, asyncio.CancelledError):
            raise
        tally.errors.append(f"{type(e).__name__}: {e}"[:200])
    return False


def http(url: str, clients: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    return httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120.0, limits=limits
    )


def completion(prompt: str, max_tokens: int) -> dict:
    return {"model": "model", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}


# ---- phases -----------------------------------------------------------------------------------------
async def batching(url: str, clients: int, requests: int, max_tokens: int) -> Tally:
    tally = Tally(f"batching, {clients} client{'s' * (clients > 1)}")
    async with http(url, clients) as c:

        async def client(i: int):
            for j in range(requests):
                await stream(
                    c, "/v1/completions", completion(f"Client {i}, request {j}: ", max_tokens), tally
                )

        await asyncio.gather(*(client(i) for i in range(clients)))
    return tally.close()


async def prefix_ttft(url_cache: str, url_plain: str, reps: int, prefix_tokens: int) -> dict:
    rng = random.Random(0)
    prefix = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(prefix_tokens))
    with_cache, without = Tally("prefix cache on"), Tally("prefix cache off")
    async with http(url_cache, 1) as on, http(url_plain, 1) as off:
        await stream(on, "/v1/completions", completion(prefix + " Warm-up?", 1), Tally("warm-up"))
        for i in range(reps):  # in turn, so a load spike on the machine hits both alike
            question = f" Question {i}: what comes next?"
            await stream(on, "/v1/completions", completion(prefix + question, 4), with_cache)
            await stream(off, "/v1/completions", completion(prefix + question, 4), without)
    return {"on": with_cache.close(), "off": without.close()}


async def sessions_phase(server: ServerProcess, n_sessions: int, clients: int, max_tokens: int):
    """Create n sessions, continue each once, then resume each for a second turn."""
    rss, turn_tallies = [], []
    sem = asyncio.Semaphore(clients)
    async with http(server.url, clients) as c:
        ids = []
        for _ in range(n_sessions):
            r = await c.post("/v1/sessions")
            ids.append(r.json()["id"])

        async def turn(sid: str, text: str, tally: Tally):
            async with sem:
                body = {
                    "model": "model",
                    "messages": [{"role": "user", "content": text}],
                    "max_tokens": max_tokens,
                    "temperature": 0,
                    "session_id": sid,
                }
                await stream(c, "/v1/chat/completions", body, tally)

        for t, text in enumerate(("Hello, who are you?", "Tell me more.")):
            tally = Tally(f"sessions, turn {t + 1}")
            step = max(1, n_sessions // 5)
            for a in range(0, n_sessions, step):
                await asyncio.gather(*(turn(sid, f"{text} ({sid[-4:]})", tally) for sid in ids[a : a + step]))
                rss.append(
                    {"turn": t + 1, "sessions_done": min(a + step, n_sessions), **memory_mb(server.proc.pid)}
                )
            turn_tallies.append(tally.close())
    return ids, turn_tallies, rss


async def kill_phase(server: ServerProcess, ids: list[str], clients: int, max_tokens: int, kill_after: int):
    """Clients continue random sessions; SIGKILL once `kill_after` turns have completed (or after 120 s,
    whichever comes first); restart on the same database; check every session, continue the cut ones."""
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as h:
        base = {sid: h.get(f"/v1/sessions/{sid}").json()["turns"] for sid in ids}
    completed = dict.fromkeys(ids, 0)
    in_flight: set[str] = set()
    tally = Tally("load until SIGKILL (cut = errors)")
    rng = random.Random(1)
    free = list(ids)
    rng.shuffle(free)
    running = True

    async def client(c: httpx.AsyncClient):
        while running:
            sid = free.pop()
            in_flight.add(sid)
            body = {
                "model": "model",
                "messages": [{"role": "user", "content": "Once more."}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "session_id": sid,
            }
            if await stream(c, "/v1/chat/completions", body, tally):
                completed[sid] += 1
            in_flight.discard(sid)
            free.insert(0, sid)

    async with http(server.url, clients) as c:
        tasks = [asyncio.create_task(client(c)) for _ in range(clients)]
        deadline = time.monotonic() + 120
        while sum(completed.values()) < kill_after and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        running = False
        cut = set(in_flight)
        server.kill()
        await asyncio.gather(*tasks, return_exceptions=True)
    tally.close()
    server.start()
    check = Tally("after restart, continue cut sessions")
    bad = []
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as h:
        for sid in ids:
            turns = h.get(f"/v1/sessions/{sid}").json()["turns"]
            want = base[sid] + completed[sid]
            if not (turns == want or (sid in cut and turns == want + 1)):
                bad.append((sid, turns, want))
    async with http(server.url, clients) as c:
        for sid in sorted(cut):
            body = {
                "model": "model",
                "messages": [{"role": "user", "content": "Still there?"}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "session_id": sid,
            }
            await stream(c, "/v1/chat/completions", body, check)
    return {
        "turns_completed_before_kill": sum(completed.values()),
        "in_flight_at_kill": len(cut),
        "sessions_checked": len(ids),
        "sessions_not_at_a_completed_turn": len(bad),
        "continued_after_restart": check.requests,
        "errors_after_restart": len(check.errors),
        "load": tally,
        "check": check.close(),
    }


# ---- driver -----------------------------------------------------------------------------------------
def say(*words) -> None:
    print(time.strftime("%H:%M:%S"), *words, file=sys.stderr, flush=True)


def table(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


async def run(args) -> dict:
    work = tempfile.mkdtemp(prefix="ssmkit-serve-load-")
    model_dir = make_model_dir(os.path.join(work, "model"), d_model=args.d_model, n_layer=args.n_layer)
    settings = ["session_cache_mb=16"]
    main = ServerProcess(model_dir, os.path.join(work, "main.db"), settings=settings).start()
    plain = None
    out: dict = {"args": vars(args), "loadavg_start": open("/proc/loadavg").read().split()[:3]}
    try:
        rows = []
        say("phase 1: batching")
        await batching(main.url, 1, 2, 8)  # warm-up (kernels compiled, caches made)
        one, many = [], []
        for _ in range(2):  # in turn, so both see the same machine load
            one.append(await batching(main.url, 1, args.requests, args.max_tokens))
            many.append(await batching(main.url, args.clients, args.requests, args.max_tokens))
        rows += [t.row(1) for t in one] + [t.row(args.clients) for t in many]
        tps = lambda ts: statistics.median(t.tokens / t.wall for t in ts)  # noqa: E731
        out["batching_ratio"] = round(tps(many) / tps(one), 2)

        say("phase 2: prefix cache")
        plain = ServerProcess(
            model_dir, os.path.join(work, "plain.db"), settings=["prefix_cache_mb=0"]
        ).start()
        pre = await prefix_ttft(main.url, plain.url, args.prefix_reps, args.prefix_tokens)
        plain.stop()
        rows += [pre["on"].row(1), pre["off"].row(1)]
        out["prefix_ttft_ratio"] = round(
            statistics.median(pre["off"].ttft) / statistics.median(pre["on"].ttft), 1
        )

        say(f"phase 3: {args.sessions} sessions")
        ids, turns, rss = await sessions_phase(main, args.sessions, args.session_clients, args.session_tokens)
        rows += [t.row(args.session_clients) for t in turns]
        out["rss_as_sessions_grow"] = rss
        out["server_memory_after_sessions"] = memory_mb(main.proc.pid)

        say("phase 4: SIGKILL under load")
        kill = await kill_phase(
            main, ids[: args.kill_sessions], args.clients, args.max_tokens, args.kill_after
        )
        rows += [kill.pop("load").row(args.clients), kill.pop("check").row(args.clients)]
        out["sigkill_restart"] = kill
        out["rows"] = rows
    finally:
        main.stop()
        if plain is not None:
            plain.stop()
        shutil.rmtree(work, ignore_errors=True)
    out["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve_load", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="4 clients, 100 sessions, fewer requests")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=6, help="requests per client in the batching phase")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--sessions", type=int, default=1000)
    p.add_argument("--session-tokens", type=int, default=8, help="tokens per session turn")
    p.add_argument("--session-clients", type=int, default=16, help="clients in the sessions phase")
    p.add_argument("--prefix-tokens", type=int, default=4000)
    p.add_argument("--prefix-reps", type=int, default=5)
    p.add_argument("--kill-sessions", type=int, default=200, help="sessions the SIGKILL phase uses")
    p.add_argument("--kill-after", type=int, default=24, help="turns completed under load before the SIGKILL")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--out", default=os.path.join(RESULTS, "serve_load.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.requests, args.sessions, args.prefix_reps, args.kill_sessions = 4, 3, 100, 3, 50
        args.session_clients, args.kill_after = 8, 8
    out = asyncio.run(run(args))
    print(table(out["rows"]))
    print(f"\nbatching: {args.clients} clients' tokens/s / 1 client's = {out['batching_ratio']}x")
    print(
        f"prefix cache: median TTFT without / with, {args.prefix_tokens}-token prefix = "
        f"{out['prefix_ttft_ratio']}x"
    )
    print(
        "server memory as sessions grow:",
        ", ".join(
            f"{r['sessions_done']} (turn {r['turn']}): {r['rss_mb']} MiB" for r in out["rss_as_sessions_grow"]
        ),
    )
    print("SIGKILL under load:", json.dumps(out["sigkill_restart"]))
    print("load average:", out["loadavg_start"], "->", out["loadavg_end"])
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
