"""Benchmark: N WebSocket sessions opened at once against daphne, one turn each (`make bench-load`).

Everything measured runs for real, and the bench starts it and removes it
afterwards: a private PostgreSQL cluster (initdb on a free port, with
pg_stat_statements), a private Redis, the fake Groq server streaming a fixed
number of tokens per reply with no delay (so the turn phase is CPU-bound),
and daphne with its default settings serving the project's settings with
DEBUG off. The shared PostgreSQL (5432) and Redis (6379) are not touched. The
clients run in processes of their own (tests/bench_load_clients.py), so their
CPU is not counted as daphne's. Each visitor first GETs `/` for its session
cookie, as a browser does; with `--no-cookie` every socket connects without
one and is a new anonymous visitor.

    make bench-load BENCH_ARGS="--sockets 300 --tokens 100"

Printed: failed handshakes and failed turns (no `done` frame, or an `error`
frame), sockets accepted per second, daphne's CPU per handshake and per token
frame, daphne's RSS per idle socket, SQL statements (pg_stat_statements) and
new database connections (pg_stat_database.sessions) per handshake and per
turn, /healthz while the sockets are open, and how daphne ends the sessions
when every socket closes at once; then a digest of daphne's log.
"""

import argparse
import contextlib
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import psutil
import psycopg

from .bench_load_clients import COOKIE_CONCURRENCY, Fleets, nofile_raise
from .conftest import PrivatePostgres, PrivateRedis, free_port, port_wait, process_stop
from .conftest import daphne_start as conftest_daphne_start
from .fake_groq import FakeGroq, Reply, text_reply

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
BENCH_DATABASE = "bench_load"
# A log line's time stamps, ids and ports, masked so that the same line about two sessions counts once.
LOG_VARIABLE = re.compile(r"^[\d-]+ [\d:,]+ |\[[^]]*\] |(?<=anon:)\w+|[0-9a-f]{8}-[0-9a-f-]{27}|(?<=port )\d+")
SAVEPOINT_NAME = re.compile(r'"s\d+_x\d+"')
FOREIGN_KEY_CHECK = re.compile(r"SELECT 1 FROM ONLY .* FOR KEY SHARE OF x$", re.DOTALL)
LOG_MARKS = ("Traceback", "ERROR", "WARNING", "Error", "timed out", "Timeout", "Killed")


# --- The stack, private to the bench -----------------------------------------------------------


class StatementsPostgres(PrivatePostgres):
    """The tests' private PostgreSQL cluster, with pg_stat_statements loaded and the default fsync."""

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
            " -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track_utility=on"
        )
        data, log = str(self.root / "data"), str(self.root / "server.log")
        self.run(str(self.bin / "pg_ctl"), "-D", data, "-o", options, "-l", log, "-w", "start")


@contextlib.contextmanager
def private_postgres() -> Iterator[str]:
    """Run a throw-away PostgreSQL cluster with pg_stat_statements; yield the bench database's URL."""
    initdbs = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda path: int(path.parts[-3]))
    if not initdbs:
        raise SystemExit("bench_load needs PostgreSQL's server binaries (/usr/lib/postgresql/*/bin/initdb)")
    root = Path(tempfile.mkdtemp(prefix="bench-load-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    cluster = StatementsPostgres(bin=initdbs[-1].parent, root=root, port=free_port())
    try:
        cluster.run(str(cluster.bin / "initdb"), "-D", str(root / "data"), "-A", "trust", "-U", "postgres", "-N")
        cluster.start()
        with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {BENCH_DATABASE}")
            conn.execute("CREATE EXTENSION pg_stat_statements")
        yield cluster.url(BENCH_DATABASE)
    finally:
        if cluster.running():
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """Run a throw-away Redis; yield its URL."""
    server = PrivateRedis(port=free_port())
    server.start()
    try:
        yield server.url()
    finally:
        server.stop()


class BenchGroq(FakeGroq):
    """The fake Groq server, answering every streamed request with one fixed reply."""

    def __init__(self, reply: Reply) -> None:
        super().__init__()
        self.reply = reply

    def _admit(self, body, headers, *, take):
        index, generation, reply = super()._admit(body, headers, take=take)
        if reply is None and take and body.get("stream"):
            reply = self.reply
        return index, generation, reply


def fake_groq_serve(tokens: int, ready, stop) -> None:
    """Serve the fake Groq in this (child) process until `stop` is set; put its URL on `ready`."""
    from . import fake_groq

    # http.server listens with a backlog of 5, and every turn connects at once.
    fake_groq._Server.request_queue_size = 4096
    words = " ".join(f"w{n}" for n in range(tokens))
    server = BenchGroq(text_reply(words, usage=(50, tokens))).start()
    ready.put(server.url)
    stop.wait()
    server.stop()


def daphne_start(
    *, port: int, database_url: str, redis_url: str, groq_url: str, log, processes: int = 1
) -> subprocess.Popen:
    """Migrate the bench database, then serve the app with daphne's default settings (DEBUG off).

    `processes` > 1: that many daphne processes on one socket, through `llmbacker.serve`.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("GROQ_", "CELERY_", "CHAT_", "DJANGO_", "DATABASE_", "REDIS_"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="llmbacker.settings",
        PYTHONPATH=str(REPO),
        DEBUG="false",
        SECRET_KEY="bench-load-only",  # noqa: S106
        ALLOWED_HOSTS="127.0.0.1,localhost",
        HTTPS="false",  # plain HTTP with DEBUG off: no redirect to https, cookies not marked Secure
        DATABASE_URL=database_url,
        # The broker too: the summaries queued as sessions end stay there, as no worker runs.
        REDIS_URL=redis_url,
        GROQ_API_KEY="bench-key",
        GROQ_BASE_URL=groq_url,
        GROQ_MAX_RETRIES="0",
        # Every client comes from 127.0.0.1: lift the per-address limits out of the way, but keep their checks.
        CHAT_MAX_SOCKETS_PER_ADDRESS="1000000",
        CHAT_RATE_LIMIT_ADDRESS_MESSAGES="1000000",
    )
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=REPO, env=env, check=True, stdout=log)
    # preexec_fn: the bench process runs no thread of its own yet.
    if processes == 1:
        return conftest_daphne_start(port=port, log=log, env=env, preexec_fn=nofile_raise)
    serve = [sys.executable, "-m", "llmbacker.serve", "-b", "127.0.0.1", "-p", str(port), "--processes", str(processes)]
    process = subprocess.Popen(serve, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=nofile_raise)  # noqa: PLW1509
    port_wait(port, process)
    return process


class Daphnes:
    """The daphne processes under the bench, as one: the process itself, or `llmbacker.serve`'s children."""

    def __init__(self, root: psutil.Process) -> None:
        self.root = root

    def processes(self) -> list[psutil.Process]:
        children = [child for child in self.root.children() if "daphne" in " ".join(child.cmdline())]
        return children or [self.root]

    def cpu_times(self) -> tuple[float, float]:
        times = [process.cpu_times() for process in self.processes()]
        return sum(t.user for t in times), sum(t.system for t in times)

    def memory_info(self) -> SimpleNamespace:
        return SimpleNamespace(rss=sum(process.memory_info().rss for process in self.processes()))


class Database:
    """The private cluster's counters for the bench database, read from the `postgres` database."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.conn = psycopg.connect(database_url.rsplit("/", 1)[0] + "/postgres", autocommit=True)

    def connections(self) -> int:
        """Return how many connections to the bench database were opened so far (PostgreSQL 14+)."""
        self.conn.execute("SELECT pg_stat_clear_snapshot()")
        row = self.conn.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s", [BENCH_DATABASE]).fetchone()
        assert row is not None
        return row[0]

    def connections_settled(self) -> int:
        """Return the connections opened so far, once every backend has reported them.

        A backend reports at exit, or after at most 10 s idle (PostgreSQL's
        PGSTAT_IDLE_INTERVAL), and daphne keeps its connections; the sockets'
        lease renewals keep them from ever being quiet for long, so just wait.
        """
        time.sleep(11)
        return self.connections()

    def statements_reset(self) -> None:
        self.conn.execute("SELECT pg_stat_statements_reset()")

    def statements(self) -> tuple[Counter, int]:
        """Return the statements sent to the bench database since the reset, and PostgreSQL's own foreign-key checks.

        pg_stat_statements lists the checks an insert makes as statements of their own.
        """
        rows = self.conn.execute(
            "SELECT s.query, s.calls FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
            " WHERE d.datname = %s",
            [BENCH_DATABASE],
        ).fetchall()
        checks = sum(calls for query, calls in rows if FOREIGN_KEY_CHECK.match(query))
        return Counter({query: calls for query, calls in rows if not FOREIGN_KEY_CHECK.match(query)}), checks

    def backends(self) -> str:
        """Return how many connections to the bench database are open now, of how many the server allows."""
        row = self.conn.execute(
            "SELECT count(*), current_setting('max_connections') FROM pg_stat_activity WHERE datname = %s",
            [BENCH_DATABASE],
        ).fetchone()
        assert row is not None
        open_now, allowed = row
        return f"{open_now} DB connections open (max_connections {allowed})"

    def sessions(self) -> tuple[int, int]:
        """Return (chat sessions recorded, chat sessions not yet ended)."""
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            row = conn.execute("SELECT count(*), count(*) - count(ended_at) FROM audit_chatsession").fetchone()
        assert row is not None
        return row[0], row[1]

    def sessions_ended_wait(self, *, patience: float = 15) -> tuple[int, float]:
        """Wait until every chat session has ended, or none more did for `patience` s.

        Return how many are still open, and when the last one ended (seconds from the call).
        """
        started = time.monotonic()
        last, changed = -1, started
        while True:
            _, still_open = self.sessions()
            if still_open != last:
                last, changed = still_open, time.monotonic()
            if not still_open or time.monotonic() - changed > patience:
                return still_open, changed - started
            time.sleep(0.2)

    def close(self) -> None:
        self.conn.close()


# --- The run -------------------------------------------------------------------------------------


def say(label: str, text: str) -> None:
    print(f"{label:<22}{text}", flush=True)


def load_average() -> str:
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    if not ordered:
        return "-"
    pick = [ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))] for share in (0.5, 0.95)]
    return f"p50 {pick[0]:.0f}  p95 {pick[1]:.0f}  max {ordered[-1]:.0f}"


def statements_by_kind(statements: Counter, count: int) -> str:
    kinds: Counter = Counter()
    for query, calls in statements.items():
        kinds[query.split(None, 1)[0].upper()] += calls
    return ", ".join(f"{kind} {calls / count:.1f}" for kind, calls in kinds.most_common())


def statements_list(statements: Counter, count: int) -> None:
    """Print each statement with its calls per handshake or per turn, the most frequent first.

    Django names each savepoint anew, and pg_stat_statements keeps utility
    statements as sent: they are counted together here.
    """
    shown: Counter = Counter()
    for query, calls in statements.items():
        shown[SAVEPOINT_NAME.sub('"…"', " ".join(query.split()))] += calls
    for query, calls in shown.most_common():
        print(f"  {calls / count:6.2f}  {query[:150]}")


def healthz(base_url: str) -> str:
    """GET /healthz; return its status, time and failed checks."""
    started = time.monotonic()
    try:
        response = httpx.get(f"{base_url}/healthz", timeout=60, trust_env=False)
    except httpx.HTTPError as exc:
        return f"failed ({type(exc).__name__}) after {time.monotonic() - started:.1f} s"
    outcome = f"{response.status_code} in {(time.monotonic() - started) * 1000:.0f} ms"
    with contextlib.suppress(ValueError):
        failed = [f"{name} {value}" for name, value in response.json().items() if str(value).startswith("error")]
        outcome += f" ({'; '.join(failed)})" if failed else ""
    return outcome


def handshakes_measure(options, fleets: Fleets, daphne: "Daphnes", database: Database, url: str) -> int:
    """Open every socket at once and print the handshake figures; return how many were accepted."""
    rss_before = daphne.memory_info().rss
    database.statements_reset()
    connections_before = database.connections()
    cpu_before = sum(daphne.cpu_times()[:2])
    opened = fleets.call("sockets_open")
    cpu = sum(daphne.cpu_times()[:2]) - cpu_before
    started = min(moment for part in opened for moment in part["started"])
    accepted = [moment for part in opened for moment in part["accepted"]]
    failures: dict[str, list[float]] = {}
    for reason, seconds in (failure for part in opened for failure in part["failures"]):
        failures.setdefault(reason, []).append(seconds)
    failed = sum(map(len, failures.values()))
    say("handshakes", f"{options.sockets} opened at once: {len(accepted)} accepted, {failed} FAILED")
    for reason, seconds in sorted(failures.items(), key=lambda item: -len(item[1])):
        say("  failed", f"{len(seconds)} x {reason} (after {min(seconds):.1f}-{max(seconds):.1f} s)")
    if accepted:
        took = max(accepted) - started
        say("accept rate", f"{len(accepted) / took:.0f} sockets/s ({len(accepted)} session frames in {took:.2f} s)")
    time.sleep(2)
    rss_idle = daphne.memory_info().rss
    say(
        "RSS per idle socket",
        f"{(rss_idle - rss_before) / max(1, len(accepted)) / 1024:.1f} KiB "
        f"(daphne {rss_before / 2**20:.0f} -> {rss_idle / 2**20:.0f} MiB with {len(accepted)} sockets open"
        + (", and what the failed handshakes left)" if failed else ")"),
    )
    statements, _ = database.statements()
    connections = database.connections_settled()
    recorded, _ = database.sessions()
    say(
        "per socket opened",
        f"{cpu / options.sockets * 1000:.1f} ms daphne CPU, {statements.total() / options.sockets:.1f} SQL statements, "
        f"{(connections - connections_before) / options.sockets:.2f} new DB connections; "
        f"{recorded - 1} chat sessions recorded",  # less the warm-up's
    )
    if options.statements:
        statements_list(statements, options.sockets)
    say("/healthz", f"{healthz(url)} with {len(accepted)} sockets open; {database.backends()}")
    return len(accepted)


def turns_measure(options, fleets: Fleets, daphne: "Daphnes", database: Database) -> None:
    """Run one turn on every open socket at once and print the turn figures."""
    database.statements_reset()
    connections_before = database.connections()
    cpu_before = sum(daphne.cpu_times()[:2])
    started = time.monotonic()
    results = [turn for part in fleets.call("turns_run") for turn in part]
    took = time.monotonic() - started
    cpu = sum(daphne.cpu_times()[:2]) - cpu_before
    if not results:
        return
    turns = len(results)
    failures = Counter(turn["failure"] for turn in results if turn["failure"])
    tokens = sum(turn["tokens"] for turn in results)
    say(
        "turns", f"{turns} sent: {turns - failures.total()} ended with done, {failures.total()} FAILED, in {took:.2f} s"
    )
    for reason, count in failures.most_common():
        say("  failed", f"{count} x {reason}")
    say("  first token ms", percentiles([turn["first_ms"] for turn in results if turn["first_ms"] is not None]))
    say("  whole turn ms", percentiles([turn["whole_ms"] for turn in results if turn["whole_ms"] is not None]))
    if tokens:
        say("CPU per token", f"{cpu / tokens * 1e6:.0f} µs (daphne {cpu:.2f} s CPU for {tokens} token frames)")
    statements, checks = database.statements()
    connections = database.connections_settled()
    say(
        "SQL per turn",
        f"{statements.total() / turns:.1f} statements ({statements_by_kind(statements, turns)}), and "
        f"{checks / turns:.1f} foreign-key checks by PostgreSQL [pg_stat_statements]",
    )
    if options.statements:
        statements_list(statements, turns)
    say(
        "DB connections/turn",
        f"{(connections - connections_before) / turns:.2f} new [pg_stat_database.sessions]",
    )


def measure(options, fleets: Fleets, daphne: "Daphnes", database: Database, url: str) -> None:
    """Run the phases and print the figures."""
    say("/healthz", f"{healthz(url)} with no socket open")
    failure = fleets.call("warm_up", first_only=True)[0]
    if failure:
        raise SystemExit(f"the warm-up turn failed: {failure}")
    if options.cookie:
        failed = sum(fleets.call("cookies_get"))
        say(
            "cookies",
            f"{options.sockets - failed} of {options.sockets} visitors got one from GET / "
            f"({COOKIE_CONCURRENCY * options.clients} at a time; {database.backends()})",
        )
    accepted = handshakes_measure(options, fleets, daphne, database, url)
    turns_measure(options, fleets, daphne, database)
    say("/healthz", f"{healthz(url)} after the turns, {accepted} sockets open; {database.backends()}")
    if options.idle:
        time.sleep(options.idle)
        alive = sum(fleets.call("sockets_ping"))
        say(
            f"after {options.idle:g} s idle",
            f"{alive} of {accepted} sockets answer ping; daphne RSS {daphne.memory_info().rss / 2**20:.0f} MiB; "
            f"/healthz {healthz(url)}",
        )
    print(f"load average {load_average()}", flush=True)
    fleets.call("sockets_close")
    still_open, took = database.sessions_ended_wait()
    outcome = f"{still_open} chat sessions NEVER ENDED" if still_open else "every chat session ended"
    say("all sockets closed", f"{outcome}; the last one ended {took:.1f} s after the close")


def log_digest(path: Path) -> None:
    """Print the distinct warnings, errors and tracebacks in daphne's log, with their counts."""
    notable: Counter = Counter()
    for line in path.read_text(errors="replace").splitlines():
        if any(mark in line for mark in LOG_MARKS) and "Killed 0 " not in line:
            notable[LOG_VARIABLE.sub("…", line).strip(" …")[:160]] += 1
    print(f"daphne log {path.relative_to(REPO)}: {notable.total()} notable lines")
    for line, count in notable.most_common(10):
        print(f"  {count:>6} x {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=1000, help="sessions opened at once")
    parser.add_argument("--tokens", type=int, default=100, help="token frames per reply")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--idle", type=float, default=0, help="seconds the sockets then stay idle before a ping")
    parser.add_argument("--timeout", type=float, default=120, help="client-side limit on a handshake or a turn")
    parser.add_argument(
        "--statements", action="store_true", help="list each statement of the handshake and the turn phase"
    )
    parser.add_argument("--no-cookie", dest="cookie", action="store_false", help="connect without a session cookie")
    parser.add_argument("--processes", type=int, default=1, help="daphne processes on one socket (llmbacker.serve)")
    options = parser.parse_args()
    # Stopped with SIGTERM, still remove what was started (the private PostgreSQL outlives the bench otherwise).
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    nofile_raise()
    print(
        f"{os.cpu_count()} cores, load average {load_average()}; {options.sockets} sockets x 1 turn x "
        f"{options.tokens} tokens, fake Groq without delay; {options.processes} daphne process(es), "
        f"{options.clients} client processes, "
        f"{'a cookie from GET /' if options.cookie else 'no cookie'} per visitor",
        flush=True,
    )
    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / "bench-load-daphne.log"
    context = multiprocessing.get_context("spawn")
    with contextlib.ExitStack() as stack:
        database_url = stack.enter_context(private_postgres())
        redis_url = stack.enter_context(private_redis())
        ready, stop = context.Queue(), context.Event()
        fake = context.Process(target=fake_groq_serve, args=(options.tokens, ready, stop), daemon=True)
        fake.start()
        stack.callback(fake.join, 10)
        stack.callback(stop.set)
        log = stack.enter_context(open(log_path, "w"))  # noqa: SIM115 (the stack closes it)
        port = free_port()
        process = daphne_start(
            port=port,
            database_url=database_url,
            redis_url=redis_url,
            groq_url=ready.get(timeout=30),
            log=log,
            processes=options.processes,
        )
        stack.callback(log_digest, log_path)
        stack.callback(process_stop, process)
        url = f"http://127.0.0.1:{port}"
        fleets = Fleets(
            context,
            processes=options.clients,
            sockets=options.sockets,
            base_url=url,
            cookie=options.cookie,
            timeout=options.timeout,
        )
        stack.callback(fleets.stop)
        database = Database(database_url)
        stack.callback(database.close)
        measure(options, fleets, Daphnes(psutil.Process(process.pid)), database, url)


if __name__ == "__main__":
    main()
