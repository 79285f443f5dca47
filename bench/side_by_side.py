#!/usr/bin/env python3
"""Side-by-side benchmark: engram against mem0, on the same PostgreSQL and embedder.

Usage:

    cargo build --release
    bench/side_by_side.py                      # shapes a and b
    bench/side_by_side.py --large              # also c: 100 users x 1,000 memories
    bench/side_by_side.py --shapes b --queries 500 --embed-latency-ms 5
    bench/side_by_side.py --shapes a --rounds 3   # systems in turn, three times: medians

The first run creates a virtualenv (default /var/tmp/engram-bench-venv) and installs
the pinned mem0ai and psycopg into it, then re-runs itself with that interpreter.

What it does, per shape (users x memories per user):

1. Starts a stand-in for OpenAI's embeddings API (POST /v1/embeddings) in its own
   process: real HTTP on 127.0.0.1, a fixed delay per request (--embed-latency-ms),
   1536-dimensional vectors made from the words of the text (each content word has a
   fixed random direction; a text is the normalised sum), so texts sharing words are
   near and recall means something. Both systems use this one server. It reads
   HTTP/1.1 off its sockets itself (a thread per connection), so that a request costs
   its stated delay and little more.
2. mem0 (`mem0ai`, its pgvector store, OpenAI embedder pointed at the stand-in), in
   a worker process of its own: `Memory.add(text, user_id=..., infer=False)` for every
   memory, then `Memory.search(query, top_k=10, filters={"user_id": ...})`.
3. engram over MCP stdio (`engram serve`, JSON-RPC lines on its stdin/stdout), then
   engram over MCP Streamable HTTP (`engram serve --transport http`, POST /mcp in a
   session per client, `ENGRAM_AUTH=none` on loopback): the `remember` tool with
   `infer: false`, then the `recall` tool with `limit: 10`.

Each system gets a freshly created database on the same server (--database-url).
The same memories, in the same order, go to each: the first half from one client,
one call at a time (users taken in turn); the second half from 8 concurrent clients,
each taking every 8th memory, so all users are written at once (mem0: 8 threads over
one Memory instance, its connection pool raised to 8; engram stdio: 8 requests in
flight on the one pipe; engram HTTP: 8 connections, one MCP session each). Then
--queries recalls from one client, one at a time, users taken in turn, after a short
untimed warm-up.

Printed per shape: remember/s (1 client, 8 clients), recall p50/p95/p99, hit@10 (the
memory a query was made from is among the 10 answers), mean answers per recall, peak
RSS (VmHWM) of the engram server process and of the mem0 worker process, and the
ratios mem0/engram for recall p50 and engram/mem0 for remember/s. Also where the
machine's time went while 8 clients remembered: CPU milliseconds per call of the system
under test (engram's server process, or mem0's worker with its client threads),
PostgreSQL's processes, the embedder, the harness's client, the kernel's threads and
the rest, with the machine's idle and stolen time (from /proc, Linux only). Latencies are
measured in this client: for engram they include the transport and JSON-RPC framing;
mem0 is a library called in-process, so its numbers carry no transport at all.
"""

import argparse
import base64
import json
import os
import queue
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from urllib.parse import urlsplit, urlunsplit

MEM0_PIN = "mem0ai==2.2.1"
PSYCOPG_PIN = "psycopg[binary,pool]==3.3.9"
NUMPY_PIN = "numpy>=1.26"
DEFAULT_VENV = "/var/tmp/engram-bench-venv"
DEFAULT_DB = "postgres://postgres@127.0.0.1:54329/postgres"
DIMS = 1536
MODEL = "text-embedding-3-small"
CONCURRENT = 8
SHAPES = {"a": (10, 1000), "b": (1, 10000), "c": (100, 1000)}


# ---------------------------------------------------------------- virtualenv


def ensure_venv(args, argv):
    """Re-run this script under the benchmark's virtualenv, creating it if missing."""
    venv = os.path.abspath(args.venv)
    if os.path.realpath(sys.prefix) == os.path.realpath(venv):
        return
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        print(f"creating virtualenv {venv}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    check = subprocess.run(
        [python, "-c", "import mem0, psycopg, psycopg_pool, numpy; import importlib.metadata as m; "
         "print(m.version('mem0ai'))"],
        capture_output=True, text=True)
    if check.returncode != 0 or check.stdout.strip() != MEM0_PIN.split("==")[1]:
        print(f"installing {MEM0_PIN} {PSYCOPG_PIN} into {venv}", file=sys.stderr)
        subprocess.run([python, "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", MEM0_PIN, PSYCOPG_PIN, NUMPY_PIN],
                       check=True)
    os.execv(python, [python, os.path.abspath(__file__)] + argv)


# ---------------------------------------------------------------- data

NAMES = """Alice Bruno Carla Dmitri Elena Farid Greta Hiro Ines Jonas Kemal Lucia Mateo Nadia
Oskar Priya Quentin Rosa Samir Tania Umberto Vera Wendell Ximena Yusuf Zora Anouk Basil
Chiara Desmond Emeka Freya Gustavo Hanna Idris Jana Kofi Leila Marek Noor""".split()
RELATIONS = """sister brother cousin neighbour colleague manager mother father aunt uncle
grandmother nephew niece roommate partner friend mentor landlord dentist coach""".split()
ACTIVITIES = """baking cycling climbing painting gardening swimming knitting sailing hiking
running fishing skiing surfing rowing dancing singing drawing pottery chess yoga boxing
juggling camping birdwatching woodworking photography skating archery fencing diving
kayaking tennis golf cooking brewing beekeeping origami calligraphy sculpting welding""".split()
OBJECTS = """sourdough espresso bicycle guitar telescope notebook kettle umbrella sweater
backpack lantern compass violin typewriter aquarium hammock skateboard microscope kimono
teapot saxophone easel harmonica sundial trampoline canoe barometer accordion chessboard
hourglass binoculars metronome wheelbarrow snorkel thermos harpsichord gramophone
pendulum xylophone tambourine""".split()
PLACES = """Lisbon Kyoto Nairobi Oslo Lima Hanoi Dublin Quito Tbilisi Porto Seville Krakow
Valparaiso Tallinn Marrakesh Bergen Cusco Ljubljana Zanzibar Reykjavik Montreal Bruges
Salzburg Antigua Hobart Galway Bilbao Lucerne Mombasa Cordoba""".split()
ADJECTIVES = """quiet crowded sunny rainy cozy windy noisy tiny spacious ancient modern rustic
elegant shabby colourful foggy humid chilly breezy vibrant""".split()
DAYS = """Mondays Tuesdays Wednesdays Thursdays Fridays Saturdays Sundays weekends
mornings evenings holidays afternoons""".split()
FOODS = """lentils mangoes olives oysters dumplings pancakes risotto falafel tacos ramen
pierogi paella curry hummus croissants baklava empanadas kimchi goulash tiramisu""".split()
TEMPLATES = [
    "{name} enjoys {activity} with a {relation} in {place} on {day} and always brings a {object}",
    "My {relation} {name} keeps a {adjective} {object} at home and loves {food} from {place}",
    "On {day} {name} goes {activity} near a {adjective} market in {place} to buy {food}",
    "{name} borrowed a {object} from the {relation} after a {adjective} trip to {place}",
    "On {day} my {relation} cooks {food} while {name} practises {activity} with a {object}",
    "{name} dreams of moving to a {adjective} flat in {place} to take up {activity} and eat {food}",
]
STOPWORDS = set("""a an the and or of to in on at with for from my a after while always
every near keeps goes loves enjoys takes up home""".split())


def user_id(i):
    return f"bench-user-{i:04d}"


def memory_text(rng):
    return rng.choice(TEMPLATES).format(
        name=rng.choice(NAMES), relation=rng.choice(RELATIONS), activity=rng.choice(ACTIVITIES),
        object=rng.choice(OBJECTS), place=rng.choice(PLACES), adjective=rng.choice(ADJECTIVES),
        day=rng.choice(DAYS), food=rng.choice(FOODS))


def content_words(text):
    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOPWORDS]


def dataset(users, per_user, seed):
    """(user, text) in remember order (users in turn), texts unique per user."""
    rng = random.Random(seed)
    texts = []
    for _ in range(users):
        seen = set()
        mine = []
        while len(mine) < per_user:
            t = memory_text(rng)
            if t not in seen:
                seen.add(t)
                mine.append(t)
        texts.append(mine)
    return [(user_id(u), texts[u][k]) for k in range(per_user) for u in range(users)]


def queries(data, users, count, seed):
    """(user, query, target text): users in turn; 3 content words of one of the user's memories."""
    rng = random.Random(seed + 1)
    by_user = {}
    for u, t in data:
        by_user.setdefault(u, []).append(t)
    out = []
    for q in range(count):
        u = user_id(q % users)
        target = rng.choice(by_user[u])
        words = content_words(target)
        out.append((u, " ".join(rng.sample(words, min(3, len(words)))), target))
    return out


# ---------------------------------------------------------------- stand-in embedder


def serve_embedder(port, latency_ms, ready_fd):
    """OpenAI-compatible POST /v1/embeddings; words -> fixed random directions, summed."""
    import numpy as np

    cache = {}
    lock = threading.Lock()

    def word_vector(w):
        v = cache.get(w)
        if v is None:
            rng = np.random.default_rng(zlib.crc32(w.encode()))
            v = rng.standard_normal(DIMS).astype(np.float32)
            v /= np.linalg.norm(v)
            with lock:
                if len(cache) > 200_000:
                    cache.clear()
                cache[w] = v
        return v

    def embed(text):
        words = content_words(text) or [text or "<empty>"]
        v = np.zeros(DIMS, dtype=np.float32)
        for w in words:
            v += word_vector(w)
        n = np.linalg.norm(v)
        return v / n if n > 0 else v

    delay = latency_ms / 1000.0

    def answer(body):
        """(status, JSON body) for one POST /v1/embeddings request body."""
        req = json.loads(body)
        inputs = req["input"]
        if isinstance(inputs, str):
            inputs = [inputs]
        b64 = req.get("encoding_format") == "base64"
        data = []
        tokens = 0
        for i, t in enumerate(inputs):
            v = embed(t)
            tokens += len(t.split())
            e = base64.b64encode(v.astype("<f4").tobytes()).decode() if b64 else [
                round(float(x), 6) for x in v]
            data.append({"object": "embedding", "index": i, "embedding": e})
        return 200, json.dumps({"object": "list", "data": data,
                                "model": req.get("model", MODEL),
                                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    def serve(conn):
        """One keep-alive connection: requests in turn until the client closes it.

        HTTP/1.1 read directly off the socket (the request line, the headers up to the
        blank line, a body of Content-Length), as the harness's client does: the standard
        library's http.server parses every request's headers with the email package.
        Measured from a client on one keep-alive connection at a 0.5 ms delay: 0.72-0.73
        ms a request (p50) with http.server, 0.67 ms with this; what remains over the
        delay is the sleep's own overshoot and the vector's making."""
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        file = conn.makefile("rb")
        try:
            while True:
                request_line = file.readline()
                if not request_line:
                    return
                length = 0
                while True:
                    line = file.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = file.read(length)
                parts = request_line.split()
                if len(parts) < 2 or parts[0] != b"POST" or \
                        not parts[1].rstrip(b"/").endswith(b"/embeddings"):
                    status, out = 404, '{"error":{"message":"not found"}}'
                else:
                    try:
                        status, out = answer(body)
                    except (ValueError, KeyError, TypeError) as e:
                        status, out = 400, json.dumps({"error": {"message": str(e)}})
                    if delay:
                        time.sleep(delay)
                out = out.encode()
                conn.sendall(f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(out)}\r\n\r\n".encode() + out)
        except (OSError, ValueError):
            return
        finally:
            file.close()
            conn.close()

    listener = socket.create_server(("127.0.0.1", port), backlog=128)
    os.write(ready_fd, f"{listener.getsockname()[1]}\n".encode())
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def start_embedder(latency_ms):
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve-embedder",
                             str(latency_ms), str(w)], pass_fds=(w,))
    os.close(w)
    port = int(os.fdopen(r).readline())
    return proc, port


# ---------------------------------------------------------------- PostgreSQL


def with_db(url, name):
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, "/" + name, p.query, p.fragment))


def recreate_db(admin_url, name):
    """A fresh database, after a checkpoint: no system starts with the dirty pages of
    the one before it still to be written out (a checkpoint midway through a load
    slows every commit it overlaps)."""
    import psycopg
    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{name}"')
        c.execute("CHECKPOINT")


def drop_db(admin_url, name):
    import psycopg
    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def server_versions(admin_url, db_url):
    import psycopg
    with psycopg.connect(admin_url) as c:
        pg = c.execute("SHOW server_version").fetchone()[0]
    with psycopg.connect(db_url) as c:
        row = c.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    return pg, row[0] if row else "?"


# ---------------------------------------------------------------- measuring


def vm_hwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def cpu_seconds(roles):
    """CPU time so far, in clock ticks, by role: the processes `roles` names (pid -> role),
    PostgreSQL's processes, the kernel's threads, everything else; and the machine's idle
    and stolen time (all of /proc/stat's idle and iowait, and its steal). A process that
    ends between two readings loses its share: every process here outlives the load."""
    ticks = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        pid, ppid = int(entry), int(fields[1])
        role = roles.get(pid) or ("PostgreSQL" if comm == "postgres" else
                                  "kernel" if pid == 2 or ppid == 2 else "other")
        ticks[role] = ticks.get(role, 0) + int(fields[11]) + int(fields[12])
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    ticks["idle"] = cpu[3] + cpu[4]
    ticks["steal"] = cpu[7] if len(cpu) > 7 else 0
    return ticks


def cpu_per_call(before, after, calls):
    """Milliseconds of CPU per call, by role, between two `cpu_seconds` readings."""
    ms = 1000.0 / os.sysconf("SC_CLK_TCK")
    return {role: (after.get(role, 0) - before.get(role, 0)) * ms / calls for role in after}


def run_load(data, call, concurrent, roles):
    """First half one call at a time, second half from `concurrent` threads; calls/s of each,
    and the CPU the concurrent half took per call, by role (`cpu_seconds`)."""
    half = len(data) // 2
    t0 = time.perf_counter()
    for u, t in data[:half]:
        call(0, u, t)
    single = half / (time.perf_counter() - t0)
    rest = data[half:]
    errors = []

    def worker(k):
        try:
            for u, t in rest[k::concurrent]:
                call(k, u, t)
        except Exception as e:  # reported, and the run fails
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrent)]
    before = cpu_seconds(roles)
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    many = len(rest) / (time.perf_counter() - t0)
    cpu = cpu_per_call(before, cpu_seconds(roles), len(rest))
    if errors:
        raise errors[0]
    return single, many, cpu


def run_recalls(qs, search, warmup):
    for u, q, _ in qs[:warmup]:
        search(u, q)
    lat, hits, answers = [], 0, 0
    for u, q, target in qs:
        t0 = time.perf_counter()
        texts = search(u, q)
        lat.append((time.perf_counter() - t0) * 1000)
        hits += target in texts
        answers += len(texts)
    return {"p50": pct(lat, 50), "p95": pct(lat, 95), "p99": pct(lat, 99),
            "hit10": hits / len(qs), "answers": answers / len(qs)}


# ---------------------------------------------------------------- mem0


def mem0_worker(job_path):
    """Runs in its own process so that its peak RSS is mem0's alone."""
    job = json.load(open(job_path))
    os.environ["MEM0_TELEMETRY"] = "False"
    os.environ["MEM0_DIR"] = job["mem0_dir"]
    import logging
    logging.basicConfig(level=logging.WARNING)
    from importlib.metadata import version
    from mem0 import Memory

    embed_url = f"http://127.0.0.1:{job['embed_port']}/v1"
    memory = Memory.from_config({
        "vector_store": {"provider": "pgvector", "config": {
            "connection_string": job["db_url"], "collection_name": "memories",
            "embedding_model_dims": DIMS, "hnsw": True, "maxconn": CONCURRENT}},
        "embedder": {"provider": "openai", "config": {
            "model": MODEL, "embedding_dims": DIMS, "api_key": "stand-in",
            "openai_base_url": embed_url}},
        "llm": {"provider": "openai", "config": {"api_key": "stand-in",
                                                 "openai_base_url": embed_url}},
        "history_db_path": os.path.join(job["mem0_dir"], "history.db"),
    })
    users, per_user = job["users"], job["per_user"]
    data = dataset(users, per_user, job["seed"])
    events = {}

    def add(_k, u, t):
        r = memory.add(t, user_id=u, infer=False)
        for item in r["results"]:
            events[item["event"]] = events.get(item["event"], 0) + 1

    single, many, cpu = run_load(data, add, CONCURRENT, {
        os.getpid(): "system", job["embedder_pid"]: "embedder"})

    def search(u, q):
        return [m["memory"] for m in memory.search(q, top_k=10, filters={"user_id": u})["results"]]

    rec = run_recalls(queries(data, users, job["queries"], job["seed"]), search, job["warmup"])
    out = {"remember_1": single, "remember_8": many, "cpu_8": cpu, "events": events, **rec,
           "rss_kib": vm_hwm_kib(os.getpid()), "version": version("mem0ai")}
    print(json.dumps(out), flush=True)


def run_mem0(args, admin_url, users, per_user, embedder):
    db = f"{args.db_prefix}_mem0"
    recreate_db(admin_url, db)
    tmp = tempfile.mkdtemp(prefix="mem0-bench-")
    embed_port, embedder_pid = embedder
    job = {"db_url": with_db(admin_url, db), "embed_port": embed_port,
           "embedder_pid": embedder_pid, "users": users,
           "per_user": per_user, "seed": args.seed, "queries": args.queries,
           "warmup": args.warmup, "mem0_dir": tmp}
    path = os.path.join(tmp, "job.json")
    json.dump(job, open(path, "w"))
    try:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--mem0-worker", path],
                             check=True, stdout=subprocess.PIPE, text=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        result["pg"], result["pgvector"] = server_versions(admin_url, with_db(admin_url, db))
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not args.keep:
            drop_db(admin_url, db)


# ---------------------------------------------------------------- engram

INITIALIZE = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "side-by-side", "version": "1"}}}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def tool_result(msg):
    if "error" in msg:
        raise RuntimeError(f"JSON-RPC error: {msg['error']}")
    r = msg["result"]
    if r.get("isError"):
        raise RuntimeError(f"tool error: {r['content'][0]['text']}")
    return r.get("structuredContent") or json.loads(r["content"][0]["text"])


class Stdio:
    """One `engram serve` child; JSON-RPC lines, any number of requests in flight."""

    def __init__(self, engram, env, log):
        self.proc = subprocess.Popen([engram, "serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=log, env=env)
        self.lock = threading.Lock()
        self.waiting = {}
        self.next_id = 1
        threading.Thread(target=self._read, daemon=True).start()
        self.request(INITIALIZE["method"], INITIALIZE["params"])
        self._send(INITIALIZED)

    def _send(self, msg):
        line = (json.dumps(msg) + "\n").encode()
        with self.lock:
            self.proc.stdin.write(line)
            self.proc.stdin.flush()

    def _read(self):
        for line in self.proc.stdout:
            msg = json.loads(line)
            slot = self.waiting.pop(msg.get("id"), None)
            if slot is not None:
                slot.put(msg)
        for slot in list(self.waiting.values()):
            slot.put({"error": "engram closed its stdout"})

    def request(self, method, params):
        slot = queue.Queue(1)
        with self.lock:
            rid = self.next_id
            self.next_id += 1
            self.waiting[rid] = slot
        self._send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        msg = slot.get(timeout=120)
        if msg.get("error") and "result" not in msg:
            raise RuntimeError(f"{method}: {msg['error']}")
        return msg

    def call(self, _client, name, arguments):
        return tool_result(self.request("tools/call", {"name": name, "arguments": arguments}))

    def close(self):
        rss = vm_hwm_kib(self.proc.pid)
        self.proc.stdin.close()
        wait_or_kill(self.proc, 10)
        return rss


def wait_or_kill(proc, seconds):
    """Waits up to `seconds` for `proc` to exit after being asked to, then kills it."""
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Connection:
    """One keep-alive HTTP/1.1 connection, spoken directly on its socket.

    The standard library's http.client parses every response's headers with the email
    package: measured on this harness, its client cost 11% of the two cores under eight
    clients against 6% for the stdio client, CPU the server under test then lacks.
    This client writes a request and reads back the status, the headers it needs and
    a body of either length (Content-Length or chunked), nothing more."""

    def __init__(self, port, timeout):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")
        self.host = f"127.0.0.1:{port}"

    def request(self, method, path, body=b"", headers=()):
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}",
                f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers)]
        self.sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        status_line = self.file.readline()
        if not status_line:
            raise RuntimeError(f"{method} {path}: the server closed the connection")
        status = int(status_line.split()[1])
        fields = {}
        while True:
            line = self.file.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            fields[name.strip().lower().decode()] = value.strip().decode()
        if "content-length" in fields:
            data = self.file.read(int(fields["content-length"]))
        elif fields.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.file.readline().split(b";")[0], 16)
                if size == 0:
                    while self.file.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                parts.append(self.file.read(size))
                self.file.readline()
            data = b"".join(parts)
        else:
            raise RuntimeError(f"{method} {path}: a response of no stated length")
        return status, fields, data.decode()

    def close(self):
        self.file.close()
        self.sock.close()


class Http:
    """`engram serve --transport http`; one keep-alive connection and MCP session per client."""

    def __init__(self, engram, env, log, clients):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        env = dict(env, ENGRAM_AUTH="none", ENGRAM_BIND=f"127.0.0.1:{self.port}")
        self.proc = subprocess.Popen([engram, "serve", "--transport", "http"],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        deadline = time.time() + 120
        while True:
            try:
                c = Connection(self.port, 2)
                ready = c.request("GET", "/readyz")[0] == 200
                c.close()
                if ready:
                    break
            except (OSError, RuntimeError, ValueError, IndexError):
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("engram serve --transport http did not become ready")
            time.sleep(0.2)
        self.sessions = [self._open() for _ in range(clients)]
        self.ids = [1] * clients

    def _post(self, conn, session, msg):
        headers = [("Content-Type", "application/json"),
                   ("Accept", "application/json, text/event-stream")]
        if session:
            headers.append(("Mcp-Session-Id", session))
        status, fields, body = conn.request("POST", "/mcp", json.dumps(msg).encode(), headers)
        if status >= 300:
            raise RuntimeError(f"/mcp answered {status}: {body[:300]}")
        return fields, body

    def _open(self):
        conn = Connection(self.port, 120)
        fields, _ = self._post(conn, None, INITIALIZE)
        session = fields.get("mcp-session-id")
        self._post(conn, session, INITIALIZED)
        return conn, session

    @staticmethod
    def _message(body, rid):
        body = body.strip()
        if body.startswith("{"):
            return json.loads(body)
        for line in body.splitlines():
            if line.startswith("data:"):
                data = line[5:].strip()
                if data:
                    msg = json.loads(data)
                    if msg.get("id") == rid:
                        return msg
        raise RuntimeError(f"no answer to request {rid} in: {body[:300]}")

    def call(self, client, name, arguments):
        conn, session = self.sessions[client]
        rid = self.ids[client]
        self.ids[client] += 1
        msg = {"jsonrpc": "2.0", "id": rid, "method": "tools/call",
               "params": {"name": name, "arguments": arguments}}
        _, body = self._post(conn, session, msg)
        return tool_result(self._message(body, rid))

    def close(self):
        rss = vm_hwm_kib(self.proc.pid)
        for conn, _ in self.sessions:
            conn.close()
        self.proc.terminate()
        wait_or_kill(self.proc, 15)
        return rss


def engram_version(engram):
    out = subprocess.run([engram, "--version"], capture_output=True, text=True).stdout.strip()
    try:
        commit = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)),
                                 "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    return out, commit


def run_engram(args, transport, admin_url, users, per_user, embedder, log):
    embed_port = embedder[0]
    db = f"{args.db_prefix}_engram"
    recreate_db(admin_url, db)
    data_home = tempfile.mkdtemp(prefix="engram-bench-")
    env = dict(os.environ,
               ENGRAM_DATABASE_URL=with_db(admin_url, db), ENGRAM_EMBEDDER="openai",
               ENGRAM_EMBEDDING_DIMS=str(DIMS), ENGRAM_EMBEDDING_MODEL=MODEL,
               OPENAI_BASE_URL=f"http://127.0.0.1:{embed_port}/v1", OPENAI_API_KEY="stand-in",
               ENGRAM_LOG=os.environ.get("ENGRAM_LOG", "warn"), XDG_DATA_HOME=data_home,
               # no limits in the way of a benchmark (with ENGRAM_AUTH=none nothing is
               # counted anyway; set so that a keyed run would not be throttled either)
               ENGRAM_MCP_USER_RATE_LIMIT="0", ENGRAM_MCP_RATE_LIMIT="0",
               ENGRAM_REST_USER_RATE_LIMIT="0", ENGRAM_REST_RATE_LIMIT="0")
    for k in ("ENGRAM_CONFIG", "ENGRAM_CACHE_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        env.pop(k, None)
    server = (Stdio(args.engram, env, log) if transport == "stdio"
              else Http(args.engram, env, log, CONCURRENT))
    try:
        data = dataset(users, per_user, args.seed)
        events = {}
        elock = threading.Lock()

        def remember(k, u, t):
            r = server.call(k, "remember", {"text": t, "user_id": u, "infer": False})
            with elock:
                for item in r["results"]:
                    events[item["event"]] = events.get(item["event"], 0) + 1

        single, many, cpu = run_load(data, remember, CONCURRENT, {
            server.proc.pid: "system", embedder[1]: "embedder", os.getpid(): "client"})

        def search(u, q):
            r = server.call(0, "recall", {"query": q, "user_id": u, "limit": 10})
            return [m["memory"] for m in r["results"]]

        rec = run_recalls(queries(data, users, args.queries, args.seed), search, args.warmup)
    finally:
        rss = server.close()
        shutil.rmtree(data_home, ignore_errors=True)
        if not args.keep:
            drop_db(admin_url, db)
    return {"remember_1": single, "remember_8": many, "cpu_8": cpu, "events": events, **rec,
            "rss_kib": rss}


# ---------------------------------------------------------------- report


def mib(kib):
    return f"{kib / 1024:.0f} MiB" if kib else "?"


def median_of(runs):
    """One system's runs of a shape as one result: each number the median over the runs
    (the other fields from the first), the runs themselves under "runs"."""
    if len(runs) == 1:
        return runs[0]
    merged = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            merged[key] = statistics.median(r[key] for r in runs)
        elif key == "cpu_8":
            merged[key] = {role: statistics.median(r[key].get(role, 0) for r in runs)
                           for role in value}
    merged["runs"] = runs
    return merged


def ratio_cell(m_runs, e_runs, ratio):
    """`ratio(mem0, engram)` over the rounds: each round's engram run against the mem0 run
    beside it, so that a slow stretch of the machine weighs on both sides of one ratio;
    the median, and the range when there is more than one round."""
    each = [ratio(m, e) for m, e in zip(m_runs, e_runs)]
    cell = f"{statistics.median(each):.2f}x"
    return cell if len(each) == 1 else f"{cell} ({min(each):.2f}-{max(each):.2f})"


CPU_ROLES = [("system", "engram or mem0"), ("PostgreSQL", "PostgreSQL"), ("embedder", "embedder"),
             ("client", "client"), ("kernel", "kernel threads"), ("other", "other"),
             ("idle", "idle"), ("steal", "stolen")]


def cpu_table(ran, names):
    """Where the machine's time went while 8 clients remembered: CPU milliseconds per call,
    by role (`cpu_seconds`). mem0's client threads are in its own process (its "system"
    column); engram's are this harness's ("client"). Idle and stolen are the machine's,
    summed over its cores."""
    lines = ["", "CPU per remember, 8 clients (ms of CPU a call, summed over the machine's cores):",
             "", "| run | " + " | ".join(label for _, label in CPU_ROLES) + " |",
             "|---|" + "---:|" * len(CPU_ROLES)]
    for key, r in ran:
        cpu = r.get("cpu_8", {})
        lines.append(f"| {names[key]} | " + " | ".join(
            f"{cpu[role]:.2f}" if role in cpu else "-" for role, _ in CPU_ROLES) + " |")
    return lines


def report(shape, users, per_user, runs):
    """`runs`: each system's results of this shape, one per round."""
    results = {key: median_of(r) for key, r in runs.items()}
    rounds = max(len(r) for r in runs.values())
    m = results.get("mem0")
    each = f", the median of {rounds} rounds" if rounds > 1 else ""
    lines = [f"\n### Shape {shape}: {users} user{'s' if users > 1 else ''} x {per_user:,} memories "
             f"({users * per_user:,}{each})\n",
             "| system | remember/s 1 client | remember/s 8 clients | recall p50 | p95 | p99 "
             "| hit@10 | answers | peak RSS |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    names = {"mem0": "mem0 (in-process)", "stdio": "engram MCP stdio",
             "http": "engram MCP HTTP"}
    ran = [(key, results[key]) for key in names if results.get(key)]
    for key, r in ran:
        lines.append(f"| {names[key]} | {r['remember_1']:.0f} | {r['remember_8']:.0f} "
                     f"| {r['p50']:.2f} ms | {r['p95']:.2f} ms | {r['p99']:.2f} ms "
                     f"| {r['hit10']:.3f} | {r['answers']:.1f} | {mib(r['rss_kib'])} |")
    lines += cpu_table(ran, names)
    if not m:
        return "\n".join(lines + ["", "(no mem0 run: no ratios)"])
    lines += ["", "| engram door | recall p50 mem0/engram | p95 mem0/engram "
              "| remember/s engram/mem0, 1 client | 8 clients |", "|---|---:|---:|---:|---:|"]
    for key, _ in ran:
        if key == "mem0":
            continue
        cells = [ratio_cell(runs["mem0"], runs[key], ratio) for ratio in (
            lambda m, e: m["p50"] / e["p50"],
            lambda m, e: m["p95"] / e["p95"],
            lambda m, e: e["remember_1"] / m["remember_1"],
            lambda m, e: e["remember_8"] / m["remember_8"])]
        lines.append(f"| {names[key]} | " + " | ".join(cells) + " |")
    if rounds > 1:
        lines.append("\n(ratios: the median of each round's, min-max in brackets)")
    ev = "; ".join(f"{k}: {v.get('events')}" for k, v in results.items())
    lines.append(f"\nremember events: {ev}")
    return "\n".join(lines)


def main():
    argv = sys.argv[1:]
    if argv[:1] == ["--serve-embedder"]:
        return serve_embedder(0, float(argv[1]), int(argv[2]))
    if argv[:1] == ["--mem0-worker"]:
        return mem0_worker(argv[1])
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--database-url", default=DEFAULT_DB,
                   help="a PostgreSQL server with pgvector, as a superuser (default %(default)s); "
                        "scratch databases are created and dropped on it")
    p.add_argument("--db-prefix", default="bench",
                   help="scratch databases are PREFIX_mem0 and PREFIX_engram (default %(default)s)")
    p.add_argument("--engram", default=os.path.join(here, "..", "target", "release", "engram"),
                   help="the engram binary (default target/release/engram)")
    p.add_argument("--venv", default=DEFAULT_VENV, help="virtualenv for mem0 (default %(default)s)")
    p.add_argument("--shapes", default="a,b",
                   help="a: 10 users x 1,000; b: 1 user x 10,000; c: 100 users x 1,000 "
                        "(default a,b)")
    p.add_argument("--large", action="store_true", help="add shape c (100k memories; slow)")
    p.add_argument("--systems", default="mem0,stdio,http",
                   help="which to run: mem0, stdio, http (default all)")
    p.add_argument("--queries", type=int, default=1000, help="timed recalls per shape")
    p.add_argument("--warmup", type=int, default=50, help="untimed recalls first")
    p.add_argument("--embed-latency-ms", type=float, default=0.5,
                   help="fixed delay of the stand-in embedder per request (default 0.5)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply memories per user (e.g. 0.1 for a quick trial)")
    p.add_argument("--keep", action="store_true", help="keep the scratch databases")
    p.add_argument("--json-out", help="also write every number to this JSON file")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the systems in turn this many times per shape and report "
                        "medians; each ratio pairs runs of one round (default 1)")
    args = p.parse_args(argv)
    ensure_venv(args, argv)

    args.engram = os.path.abspath(args.engram)
    if not os.access(args.engram, os.X_OK):
        sys.exit(f"no engram binary at {args.engram}: cargo build --release, or --engram PATH")
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    if args.large and "c" not in shapes:
        shapes.append("c")
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in shapes if s not in SHAPES] + \
        [s for s in systems if s not in ("mem0", "stdio", "http")]
    if args.rounds < 1:
        sys.exit("--rounds takes 1 or more")
    if unknown or not shapes or not systems:
        sys.exit(f"unknown or missing: {', '.join(unknown) or 'shapes/systems'}; "
                 f"--shapes takes {','.join(SHAPES)}, --systems mem0,stdio,http")
    embedder, embed_port = start_embedder(args.embed_latency_ms)
    log = open(os.path.join(tempfile.gettempdir(), "engram-side-by-side.log"), "ab")
    ev, commit = engram_version(args.engram)
    meta = {"engram": ev, "commit": commit, "python": sys.version.split()[0],
            "embed_latency_ms": args.embed_latency_ms, "queries": args.queries,
            "command": "bench/side_by_side.py " + " ".join(argv)}
    print(f"{ev} ({commit}), Python {meta['python']}, stand-in embedder on :{embed_port} "
          f"({DIMS} dims, {args.embed_latency_ms} ms per request); engram rate limits off "
          f"(ENGRAM_*_RATE_LIMIT=0, ENGRAM_AUTH=none on loopback)", file=sys.stderr)
    all_results = {}
    try:
        for shape in shapes:
            users, per_user = SHAPES[shape]
            per_user = max(2, int(per_user * args.scale))
            runs = {system: [] for system in systems}
            for round_no in range(1, args.rounds + 1):
                for system in systems:
                    t0 = time.time()
                    label = f"shape {shape}: {system}" + \
                        (f" (round {round_no} of {args.rounds})" if args.rounds > 1 else "")
                    print(f"{label} ...", file=sys.stderr, flush=True)
                    if system == "mem0":
                        result = run_mem0(args, args.database_url, users, per_user,
                                          (embed_port, embedder.pid))
                        meta.update(mem0ai=result["version"], postgres=result["pg"],
                                    pgvector=result["pgvector"])
                    else:
                        result = run_engram(args, system, args.database_url, users, per_user,
                                            (embed_port, embedder.pid), log)
                    runs[system].append(result)
                    print(f"{label} done in {time.time() - t0:.0f} s: {json.dumps(result)}",
                          file=sys.stderr, flush=True)
            all_results[shape] = {"users": users, "per_user": per_user,
                                  **{system: median_of(r) for system, r in runs.items()}}
            print(report(shape, users, per_user, runs), flush=True)
    finally:
        embedder.terminate()
        embedder.wait()
    print("\n" + ", ".join(f"{k}: {v}" for k, v in meta.items()))
    if args.json_out:
        json.dump({"meta": meta, "results": all_results}, open(args.json_out, "w"), indent=2)


if __name__ == "__main__":
    main()
