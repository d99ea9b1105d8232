"""The rate limits' Redis client (app/redisclient.py) against real `redis-server` processes of the
tests' own: URLs, login and database, NOSCRIPT, split and pipelined replies, and failing within the
bound when Redis is stalled, silent or gone.

`RedisWindows` (app/ratelimit.py) is the client's one user: most tests count hits through it, and
check them with `limits`' own Redis storage (redis-py), which must see the same windows.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import pytest
import redis
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from app import ratelimit
from app.ratelimit import _BATCH_SCRIPT, Policy, RateLimiter, RedisWindows
from app.redisclient import ProtocolError, ReplyError, ScriptRunner, _Connection, parse_url
from tests.support import captured_logs, new_user
from tests.support.apps import make_settings
from tests.support.redis_servers import RedisServer
from tests.support.servers import free_port

READ = Policy.parse("read", "3/minute")
# The bound where the test is not about it: seconds, not the app's 100 ms (a busy CI machine).
PATIENT = 5.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path) as running:
        yield running


def sync_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5)


def limits_remaining(url: str, policy: Policy, key: str) -> int:
    """What `limits` itself (its redis-py storage) says is left of `key`'s window."""
    storage = RedisStorage(url)
    return MovingWindowRateLimiter(storage).get_window_stats(policy.item, policy.name, key).remaining


async def outcomes(windows: RedisWindows, key: str, count: int, policy: Policy = READ) -> list[str]:
    """Count `count` hits of `key`, each in its own event-loop turn: "ok", "refused" or the error."""
    results = []
    for _ in range(count):
        try:
            results.append("ok" if await windows.hit(policy, key, 1) is None else "refused")
        except Exception as exc:
            results.append(type(exc).__name__)
    return results


def test_parse_url_reads_what_redis_py_reads() -> None:
    plain = parse_url("redis://cache.internal:6380/4")
    assert (plain.host, plain.port, plain.db, plain.username, plain.password, plain.tls) == (
        "cache.internal",
        6380,
        4,
        None,
        None,
        None,
    )
    login = parse_url("redis://app%40ops:p%3Ass%2Fw@h?db=7")
    assert (login.username, login.password, login.db, login.port) == ("app@ops", "p:ss/w", 7, 6379)
    assert "p:ss/w" not in repr(login)
    assert parse_url("redis://:secret@h").password == "secret"
    unix = parse_url("redis+unix:///run/redis/redis.sock?db=2")
    assert (unix.path, unix.db) == ("/run/redis/redis.sock", 2)
    verified = parse_url("rediss://h:6390/1")
    assert verified.tls is not None and verified.tls.verify_mode == ssl.CERT_REQUIRED
    assert verified.tls.check_hostname
    unverified = parse_url("rediss://h/1?ssl_cert_reqs=none")
    assert unverified.tls is not None and unverified.tls.verify_mode == ssl.CERT_NONE
    assert not unverified.tls.check_hostname


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://:pw@h/0?socket_timeout=5", "'socket_timeout' is not supported"),
        ("redis://h/0?ssl_cert_reqs=none", "'ssl_cert_reqs' is not supported"),  # TLS options without TLS
        ("redis://user@h/0", "needs its password"),
        ("redis://h/zero", "must be a number"),
        ("redis+unix://", "needs the socket's path"),
        ("rediss://h/0?ssl_cert_reqs=maybe", "none, optional or required"),
        ("rediss://h/0?ssl_ca_certs=/nonexistent/ca.pem", "cannot load the TLS files"),
    ],
)
def test_parse_url_refuses_what_it_cannot_do(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as refused:
        parse_url(url.replace("pw@", "hunter2@"))
    assert "hunter2" not in str(refused.value)
    # And the app refuses to start with it (one line naming the variable: app.main.load_settings).
    with pytest.raises(ValueError, match="RATE_LIMIT_STORAGE_URL"):
        make_settings("sqlite:///x.db", RATE_LIMIT_STORAGE_URL=url)


def test_replies_are_parsed_however_they_are_split() -> None:
    replies: list[object] = []
    connection = _Connection(lambda _: None)
    for _ in range(5):
        connection.waiting.append(replies.append)
    stream = b"+OK\r\n:0\r\n*3\r\n:0\r\n$12\r\n1700000000.5\r\n$-1\r\n-NOSCRIPT No matching script\r\n*0\r\n"
    for index in range(len(stream)):  # one byte per read
        connection.data_received(stream[index : index + 1])
    assert replies[:3] == [b"OK", 0, [0, b"1700000000.5", None]]
    assert isinstance(replies[3], ReplyError) and str(replies[3]).startswith("NOSCRIPT")
    assert replies[4] == []
    assert not connection.waiting


def test_a_reply_nobody_asked_for_or_garbage_closes_the_connection() -> None:
    failures: list[object] = []
    lost: list[_Connection] = []
    connection = _Connection(lost.append)
    connection.waiting.append(failures.append)
    connection.waiting.append(failures.append)
    connection.data_received(b":1\r\n")
    connection.data_received(b"?what\r\n")
    assert failures[0] == 1
    assert isinstance(failures[1], ProtocolError)
    assert connection.closed and lost == [connection]


def test_window_keys_are_limits_keys() -> None:
    for policy in (READ, Policy.parse("write", "300/minute"), Policy.parse("auth-failures", "5/hour")):
        for key in ("user-1", "2001:db8:1:2::/64", "203.0.113.7", "a/b"):
            assert policy.redis_key(key) == f"LIMITS:{policy.item.key_for(policy.name, key)}"


async def test_counts_exactly_as_limits_does(server: RedisServer) -> None:
    windows = RedisWindows(server.url, timeout=PATIENT)
    try:
        key = new_user()
        assert await outcomes(windows, key, 2) == ["ok", "ok"]
        # limits' own storage reads the same key and entries ...
        assert limits_remaining(server.url, READ, key) == 1
        # ... and what it counts, we see: the window is full.
        assert MovingWindowRateLimiter(RedisStorage(server.url)).hit(READ.item, READ.name, key)
        assert await outcomes(windows, key, 2) == ["refused", "refused"]
        assert limits_remaining(server.url, READ, key) == 0
    finally:
        await windows.aclose()


async def test_pipelined_calls_are_answered_in_order(server: RedisServer) -> None:
    windows = RedisWindows(server.url, timeout=PATIENT)
    try:
        users = [new_user() for _ in range(20)]
        hits = []
        for round_no in range(4):  # four batches on the wire at once, one per event-loop turn
            hits += [windows.hit(READ, user, 1) for user in users]
            assert round_no == 0 or not hits[0].done()
            await asyncio.sleep(0)
        results = await asyncio.gather(*hits)
        # Each user: three fit, the fourth is refused; answers went to the right requests.
        for index, result in enumerate(results):
            assert (result is None) == (index < 60), (index, result)
    finally:
        await windows.aclose()


async def test_closing_answers_the_hits_on_their_way_first(server: RedisServer) -> None:
    windows = RedisWindows(server.url, timeout=PATIENT)
    hits = [windows.hit(READ, new_user(), 1) for _ in range(3)]  # queued, not sent yet
    await windows.aclose()
    assert [hit.done() and hit.result() for hit in hits] == [None, None, None]


async def test_noscript_after_script_flush_is_recovered(server: RedisServer) -> None:
    windows = RedisWindows(server.url, timeout=PATIENT)
    admin = sync_client(server.url)
    try:
        key = new_user()
        assert await outcomes(windows, key, 1) == ["ok"]
        admin.script_flush()
        assert admin.script_exists(ScriptRunner(server.url, _BATCH_SCRIPT, 1)._sha.decode()) == [False]
        # EVALSHA gets NOSCRIPT: the batch goes again as EVAL, which also caches the script again.
        assert await outcomes(windows, key, 3) == ["ok", "ok", "refused"]
        assert admin.script_exists(ScriptRunner(server.url, _BATCH_SCRIPT, 1)._sha.decode()) == [True]
        assert limits_remaining(server.url, READ, key) == 0
    finally:
        admin.close()
        await windows.aclose()


async def test_password_username_and_database(tmp_path: Path) -> None:
    with RedisServer(tmp_path, password="server-secret") as secured:
        admin = sync_client(secured.url)
        try:
            admin.acl_setuser("limiter", enabled=True, passwords=["+limiter secret"], keys=["*"], commands=["+@all"])
            base = f"127.0.0.1:{secured.port}"
            for url in (f"redis://:server-secret@{base}/3", f"redis://limiter:limiter%20secret@{base}/5"):
                windows = RedisWindows(url, timeout=PATIENT)
                try:
                    key = new_user()
                    assert await outcomes(windows, key, 4) == ["ok", "ok", "ok", "refused"]
                finally:
                    await windows.aclose()
                assert limits_remaining(url, READ, key) == 0  # in that database ...
                assert limits_remaining(f"redis://:server-secret@{base}/0", READ, key) == 3  # ... not in 0
            for wrong in (f"redis://:guess@{base}/3", f"redis://limiter:guess@{base}/3", f"redis://{base}/3"):
                windows = RedisWindows(wrong, timeout=PATIENT)
                try:
                    assert await outcomes(windows, new_user(), 1) == ["ReplyError"], wrong
                finally:
                    await windows.aclose()
        finally:
            admin.close()


async def test_unix_socket(tmp_path: Path) -> None:
    socket_path = tmp_path / "redis.sock"
    with RedisServer(tmp_path, args=["--unixsocket", str(socket_path), "--unixsocketperm", "700"]):
        windows = RedisWindows(f"redis+unix://{socket_path}?db=2", timeout=PATIENT)
        try:
            assert await outcomes(windows, new_user(), 4) == ["ok", "ok", "ok", "refused"]
        finally:
            await windows.aclose()


class Proxy:
    """A TCP proxy to a Redis on a free port. With `split` it passes replies on one byte per write;
    its first `silent` connections are accepted and read but never answered (nor passed on); after
    `freeze()` the connections open so far pass nothing back any more (a half-open connection).
    """

    def __init__(self, target_port: int, *, split: bool = False, silent: int = 0) -> None:
        self.target_port = target_port
        self.split = split
        self.silent = silent
        self.port = 0
        self._accepted = 0
        self._open: list[asyncio.StreamWriter] = []
        self._frozen: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def freeze(self) -> None:
        self._frozen.update(id(writer) for writer in self._open)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, replies: bool) -> None:
        try:
            while data := await reader.read(65536):
                if replies and id(writer) in self._frozen:
                    continue
                for index in range(len(data)) if replies and self.split else [None]:
                    writer.write(data if index is None else data[index : index + 1])
                    await writer.drain()
                    if index is not None:
                        await asyncio.sleep(0.001)  # separate segments, separate reads
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._accepted += 1
        if self._accepted <= self.silent:
            while await client_reader.read(65536):
                pass
            return
        self._open.append(client_writer)
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        for task in (
            asyncio.create_task(self._pump(client_reader, server_writer, False)),
            asyncio.create_task(self._pump(server_reader, client_writer, True)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Proxy]:
        listener = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = listener.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            listener.close()
            for task in list(self._tasks):
                task.cancel()


async def test_replies_split_across_reads_from_a_real_redis(server: RedisServer) -> None:
    async with Proxy(server.port, split=True).running() as split:
        # Seconds, not 100 ms: the proxy sends a millisecond per byte.
        windows = RedisWindows(f"redis://127.0.0.1:{split.port}/1", timeout=30)
        try:
            key = new_user()
            hits = [windows.hit(READ, key, 1) for _ in range(5)]
            results = await asyncio.gather(*hits)
            assert [result is None for result in results] == [True, True, True, False, False]
        finally:
            await windows.aclose()


async def test_a_server_that_never_answers_fails_open_within_the_bound() -> None:
    async with Proxy(0, silent=1000).running() as silent:
        url = f"redis://127.0.0.1:{silent.port}/0"
        windows = RedisWindows(url, timeout=0.5)
        try:
            async with asyncio.timeout(5):  # a guard: the bound is 100 ms
                assert await outcomes(windows, new_user(), 2) == ["TimeoutError", "TimeoutError"]
        finally:
            await windows.aclose()
        settings = make_settings("sqlite:///unused.db", RATE_LIMIT_ENABLED=True, RATE_LIMIT_STORAGE_URL=url)
        limiter = RateLimiter(settings)
        try:
            with captured_logs() as lines:
                async with asyncio.timeout(5):
                    await limiter.charge(new_user(), "read")  # served: no exception
        finally:
            await limiter.aclose()
        assert any("rate limit storage unavailable (TimeoutError)" in line for line in lines)


async def test_a_call_that_times_out_closes_its_connection(server: RedisServer) -> None:
    # Half-open or stuck, a connection that did not answer one call is not used again.
    async with Proxy(server.port, silent=1).running() as flaky:
        windows = RedisWindows(f"redis://127.0.0.1:{flaky.port}/0", timeout=1)
        try:
            key = new_user()
            assert await outcomes(windows, key, 1) == ["TimeoutError"]  # the handshake got no answer
            assert await outcomes(windows, key, 1) == ["ok"]  # on a second connection
            flaky.freeze()  # which goes silent
            assert await outcomes(windows, key, 1) == ["TimeoutError"]
            # A third connection; the frozen one's late hit counted in Redis all the same.
            assert await outcomes(windows, key, 2) == ["ok", "refused"]
        finally:
            await windows.aclose()


async def test_stalled_then_gone_then_back_reconnects(server: RedisServer) -> None:
    windows = RedisWindows(server.url, timeout=1)
    try:
        key = new_user()
        assert await outcomes(windows, key, 1) == ["ok"]
        server.pause()  # connected, then silent: the call times out and the connection is dropped
        try:
            assert await outcomes(windows, key, 1) == ["TimeoutError"]
        finally:
            server.resume()
        # The next call opens a new connection (a fresh AUTH/SELECT/SCRIPT LOAD) and counts.
        assert await outcomes(windows, key, 1) == ["ok"]
        server.stop()
        assert (await outcomes(windows, key, 1))[0] in ("ConnectionRefusedError", "ConnectionResetError")
        server.start()  # empty again: the script cache too
        assert await outcomes(windows, key, 4) == ["ok", "ok", "ok", "refused"]
    finally:
        await windows.aclose()


async def test_an_error_reply_fails_the_call_and_the_next_one_reconnects(server: RedisServer) -> None:
    windows = RedisWindows(server.url, timeout=PATIENT)
    admin = sync_client(server.url)
    try:
        key = new_user()
        admin.set(READ.redis_key(key), "not a list")  # the script's LRANGE fails: WRONGTYPE
        assert await outcomes(windows, key, 1) == ["ReplyError"]
        admin.delete(READ.redis_key(key))
        assert await outcomes(windows, key, 1) == ["ok"]
    finally:
        admin.close()
        await windows.aclose()


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signed for localhost and 127.0.0.1: (ca, cert, key) PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "redis.pem", directory / "redis.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


async def test_tls(tmp_path: Path) -> None:
    ca, cert, key = make_certificates(tmp_path)
    tls_port = free_port()
    tls = ["--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    tls += ["--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"]
    with RedisServer(tmp_path, args=tls):  # plain on its own port too (to see that it started)
        for host, query in [("localhost", f"ssl_ca_certs={ca}"), ("127.0.0.1", "ssl_cert_reqs=none")]:
            windows = RedisWindows(f"rediss://{host}:{tls_port}/1?{query}", timeout=PATIENT)
            try:
                assert await outcomes(windows, new_user(), 4) == ["ok", "ok", "ok", "refused"]
            finally:
                await windows.aclose()
        # Verified by default: a certificate from an unknown CA is refused (the limits fail open).
        windows = RedisWindows(f"rediss://localhost:{tls_port}/1", timeout=PATIENT)
        try:
            assert await outcomes(windows, new_user(), 1) == ["SSLCertVerificationError"]
        finally:
            await windows.aclose()


# Allowances: hits a worker admits itself while Redis says the window has plenty of room.


async def _count(windows: RedisWindows, policy: Policy, key: str) -> str:
    """One hit as RateLimiter makes it: "admitted" by the worker, else asked: "ok" or "refused"."""
    if windows.admit(policy, key, 1):
        return "admitted"
    return "ok" if await windows.hit(policy, key, 1) is None else "refused"


async def _until_counted(url: str, policy: Policy, key: str, count: int) -> None:
    """Wait (at most PATIENT seconds) until Redis holds `count` entries in `key`'s window."""
    admin = sync_client(url)
    try:
        for _ in range(int(PATIENT * 100)):
            if admin.llen(policy.redis_key(key)) == count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{count} hits were not counted within {PATIENT} s")
    finally:
        admin.close()


async def _admitted_once_answered(windows: RedisWindows, policy: Policy, key: str) -> None:
    """Admit one hit of `key` as soon as Redis' answer to the hits on their way is back (at most
    PATIENT seconds)."""
    for _ in range(int(PATIENT * 100)):
        if windows.admit(policy, key, 1):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no allowance for {key} within {PATIENT} s")


async def test_allowance_admits_four_hits_without_a_round_trip_then_counts_them(server: RedisServer) -> None:
    policy = Policy.parse("read", "100/minute")  # plenty of room: 25 or more left
    windows = RedisWindows(server.url, timeout=PATIENT)
    admin = sync_client(server.url)
    try:
        key = new_user()
        assert not windows.admit(policy, key, 1)  # nothing known of this window yet: ask
        assert await windows.hit(policy, key, 1) is None
        # Redis said there is room: four hits are admitted here, the fifth has to ask.
        assert [windows.admit(policy, key, 1) for _ in range(5)] == [True] * 4 + [False]
        assert admin.llen(policy.redis_key(key)) == 1  # not sent yet (no event-loop turn since)
        await _until_counted(server.url, policy, key, 5)  # sent and counted, as limits counts them
        assert limits_remaining(server.url, policy, key) == 95
        await _admitted_once_answered(windows, policy, key)  # the allowance is whole again
        other = new_user()
        assert not windows.admit(policy, other, 1)  # an allowance is per key
    finally:
        admin.close()
        await windows.aclose()
    await _until_counted(server.url, policy, key, 6)  # closing sends what waits to go


async def test_near_the_limit_every_hit_asks_and_one_worker_admits_exactly_the_limit(server: RedisServer) -> None:
    policy = Policy.parse("write", "40/minute")  # allowances while 16 or more are left
    windows = RedisWindows(server.url, timeout=PATIENT)
    try:
        key = new_user()
        outcomes = [await _count(windows, policy, key) for _ in range(45)]
        assert outcomes.count("admitted") >= 4
        assert "admitted" not in outcomes[25:]  # 24 counted at most when the last allowance came
        assert outcomes[40:] == ["refused"] * 5
        assert outcomes[:40].count("refused") == 0
        assert limits_remaining(server.url, policy, key) == 0
        assert sync_client(server.url).llen(policy.redis_key(key)) == 40
        small = Policy.parse("read", "3/minute")  # too small for allowances: every hit asks
        assert [await _count(windows, small, key) for _ in range(4)] == ["ok", "ok", "ok", "refused"]
    finally:
        await windows.aclose()


async def test_two_workers_admit_at_most_four_more_each_than_the_limit(server: RedisServer) -> None:
    policy = Policy.parse("read", "100/minute")
    workers = [RedisWindows(server.url, timeout=PATIENT) for _ in range(2)]
    try:
        key = new_user()
        for windows in workers:  # each worker hears there is room
            assert await windows.hit(policy, key, 1) is None
        served = 2
        # One worker uses up the window while the other keeps its allowance from the start ...
        while await _count(workers[0], policy, key) != "refused":
            served += 1
        assert served == 100
        # ... which lets it admit four more before it hears the window is full: the bound.
        late_from = time.time()
        late = [await _count(workers[1], policy, key) for _ in range(6)]
        assert late == ["admitted"] * 4 + ["refused"] * 2
        assert not workers[1].admit(policy, key, 1)
        # The four were counted: they are the newest entries (the list keeps the newest 100).
        entries = cast(list[bytes], sync_client(server.url).lrange(policy.redis_key(key), 0, 4))
        newest = [float(entry) for entry in entries]
        assert [entry >= late_from for entry in newest] == [True] * 4 + [False]
    finally:
        for windows in workers:
            await windows.aclose()


async def test_admitted_hits_that_cannot_be_counted_are_reported_and_end_every_allowance(
    server: RedisServer,
) -> None:
    policy = Policy.parse("read", "100/minute")
    failures: list[int] = []
    failed = asyncio.Event()

    def on_failure(exc: Exception, uncounted: int) -> None:
        failures.append(uncounted)
        failed.set()

    windows = RedisWindows(server.url, timeout=1, on_failure=on_failure)
    try:
        key = new_user()
        assert await windows.hit(policy, key, 1) is None
        server.stop()
        assert [windows.admit(policy, key, 1) for _ in range(3)] == [True] * 3
        async with asyncio.timeout(PATIENT):
            await failed.wait()
        assert failures == [3]  # one call carried all three
        assert not windows.admit(policy, key, 1)  # nothing known now: the next hit asks (and fails open)
        server.start()
        assert await windows.hit(policy, key, 1) is None
        assert windows.admit(policy, key, 1)
    finally:
        await windows.aclose()


async def test_a_burst_of_one_user_in_one_worker_gets_at_most_four_past_the_limit(server: RedisServer) -> None:
    policy = Policy.parse("read", "100/minute")
    windows = RedisWindows(server.url, timeout=PATIENT)
    try:
        key = new_user()
        for _ in range(60):
            assert await windows.hit(policy, key, 1) is None  # asked: none of the allowance in use
        # The worst case: 40 hits ask, and while their call is on its way (sent, not answered) the
        # worker still holds the allowance Redis gave at 60, so it admits four more itself.
        asked = [windows.hit(policy, key, 1) for _ in range(40)]
        await asyncio.sleep(0)  # the call goes out
        assert [windows.admit(policy, key, 1) for _ in range(5)] == [True] * 4 + [False]
        answers = await asyncio.gather(*asked)
        served = 60 + answers.count(None) + 4
        assert 100 <= served <= 104  # the bound: four past the limit at most
        assert not windows.admit(policy, key, 1)  # the answer said the window is full
        assert await windows.hit(policy, key, 1) is not None
    finally:
        await windows.aclose()


async def test_past_max_allowances_new_keys_ask_and_every_hit_is_answered(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ratelimit, "MAX_ALLOWANCES", 2)
    policy = Policy.parse("read", "100/minute")
    windows = RedisWindows(server.url, timeout=PATIENT)
    try:
        keys = [new_user() for _ in range(4)]
        async with asyncio.timeout(PATIENT):  # every hit gets its answer
            assert await asyncio.gather(*(windows.hit(policy, key, 1) for key in keys)) == [None] * 4
        assert [windows.admit(policy, key, 1) for key in keys] == [True, True, False, False]
    finally:
        await windows.aclose()
