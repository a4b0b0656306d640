#!/usr/bin/env python3
"""The QMP client script of app_qmp.rs: drives a QMP server with the PyPI client `qemu.qmp`.

    client.py SOCKET aioctx|qsd

Runs the same commands against aioctx's monitor (examples::qmp) and qemu-storage-daemon, and prints
one `SHAPE name json` line per reply: the reply with every number and string replaced by its type,
except the values that both must agree on (names, error classes and descriptions). The Rust test
compares the lines of both servers. In `aioctx` mode it also checks query-iothreads, what a
poll-max-ns of 0 does to the IOThread, an exec-oob command answered while the main thread is
blocked (a handshake on stdin/stdout with the test: `block?` ... `blocked`, `oob-answered` ...
`unblocked`), and the SHUTDOWN event after quit. Every failure is an AssertionError (exit status 1).
"""

import asyncio
import json
import sys

from qemu.qmp import ExecuteError, QMPClient


def shape(value, keep=False):
    if isinstance(value, dict):
        return {k: shape(v, keep or k in ("class", "desc", "name", "type")) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v, keep) for v in value]
    if keep:
        return value
    return type(value).__name__


def report(name, value):
    print("SHAPE", name, json.dumps(shape(value), sort_keys=True), flush=True)


async def error_of(client, cmd, args=None, oob=False):
    try:
        await client.execute(cmd, args, oob=oob)
    except ExecuteError as e:
        return {"class": e.error_class, "desc": e.error.error.desc}
    raise AssertionError(f"{cmd} {args} succeeded")


def handshake(say, expect):
    print(say, flush=True)
    line = sys.stdin.readline().strip()
    assert line == expect, f"expected {expect!r} from the test, got {line!r}"


async def main(sock, mode):
    client = QMPClient("app_qmp")
    await client.connect(sock)
    greeting = client.greeting._raw
    assert "oob" in greeting["QMP"]["capabilities"], greeting
    report("greeting", greeting)

    report("query-version", await client.execute("query-version"))
    names = {c["name"] for c in await client.execute("query-commands")}
    for cmd in ("qmp_capabilities", "query-version", "qom-list", "qom-get", "qom-set",
                "query-block-exports", "quit"):
        assert cmd in names, (cmd, names)

    objects = await client.execute("qom-list", {"path": "/objects"})
    assert {"name": "io0", "type": "child<iothread>"} in objects, objects
    assert {"name": "io1", "type": "child<iothread>"} in objects, objects
    report("qom-list /objects", sorted(objects, key=lambda p: p["name"]))
    props = {p["name"]: p["type"] for p in await client.execute("qom-list", {"path": "/objects/io0"})}
    for p in ("poll-max-ns", "poll-grow", "poll-shrink", "aio-max-batch"):
        assert props.get(p) == "int", (p, props)

    path = "/objects/io1"
    get = lambda prop: client.execute("qom-get", {"path": path, "property": prop})
    # The IOThread defaults: QEMU's 32 us window, aioctx's 64 us (PollParams::IOTHREAD says why).
    assert await get("poll-max-ns") == {"aioctx": 65536, "qsd": 32768}[mode]
    assert await get("type") == "iothread"
    for prop, value in (("poll-max-ns", 0), ("poll-grow", 4), ("poll-shrink", 2),
                        ("aio-max-batch", 16)):
        reply = await client.execute("qom-set", {"path": path, "property": prop, "value": value})
        report(f"qom-set {prop}", reply)
        got = await get(prop)
        assert got == value, (prop, got, value)
        report(f"qom-get {prop}", got)

    exports = await client.execute("query-block-exports")
    assert exports == [{"id": "exp0", "type": "nbd", "node-name": "file0", "shutting-down": False}], exports
    report("query-block-exports", exports)

    # Errors the client sees as ExecuteError (they carry the request's id).
    errors = {
        "qom-set string": ("qom-set", {"path": path, "property": "poll-max-ns", "value": "x"}),
        "qom-set float": ("qom-set", {"path": path, "property": "poll-grow", "value": 1.5}),
        "qom-set negative": ("qom-set", {"path": path, "property": "poll-shrink", "value": -1}),
        "qom-set huge": ("qom-set", {"path": path, "property": "poll-max-ns", "value": 2**64 - 1}),
        "qom-set type": ("qom-set", {"path": path, "property": "type", "value": "x"}),
        "qom-set missing value": ("qom-set", {"path": path, "property": "poll-max-ns"}),
        "qom-get unknown property": ("qom-get", {"path": path, "property": "nope"}),
        "qom-get unknown path": ("qom-get", {"path": "/objects/nope", "property": "type"}),
        "qom-get path type": ("qom-get", {"path": 5, "property": "type"}),
        "qom-list extra argument": ("qom-list", {"path": "/objects", "extra": 1}),
        "query-version extra argument": ("query-version", {"x": 1}),
        "unknown command": ("no-such-command", None),
        "qmp_capabilities again": ("qmp_capabilities", None),
    }
    for name, (cmd, args) in errors.items():
        report(name, await error_of(client, cmd, args))
    report("exec-oob of an in-band command", await error_of(client, "query-version", oob=True))
    # The server went on serving after every error.
    report("query-version after errors", await client.execute("query-version"))

    if mode == "aioctx":
        await aioctx_only(client)

    assert await client.execute("quit") == {}
    if mode == "aioctx":
        event = await asyncio.wait_for(client.events.get(), 10)
        assert event["event"] == "SHUTDOWN", event
        assert event["data"] == {"guest": False, "reason": "host-qmp-quit"}, event
        ts = event["timestamp"]
        assert isinstance(ts["seconds"], int) and 0 <= ts["microseconds"] < 10**6, ts
    try:
        await client.disconnect()
    except EOFError:
        pass  # the server closed the connection after quit, before the client did
    print("done", flush=True)


async def iothread(client, name):
    for t in await client.execute("query-iothreads"):
        if t["id"] == name:
            return t
    raise AssertionError(f"no iothread {name}")


async def aioctx_only(client):
    threads = await client.execute("query-iothreads")
    assert [t["id"] for t in threads] == ["io0", "io1"], threads
    for t in threads:
        for key in ("thread-id", "poll-max-ns", "poll-grow", "poll-shrink", "aio-max-batch"):
            assert isinstance(t[key], int), (key, t)
        for key in ("iterations", "poll-hits", "poll-misses", "poll-ns", "notify-writes",
                    "notify-skipped", "uring-enters"):
            assert isinstance(t["x-aioctx-stats"][key], int), (key, t)
    io1 = await iothread(client, "io1")
    assert io1["poll-max-ns"] == 0 and io1["poll-grow"] == 4 and io1["aio-max-batch"] == 16, io1

    # aioctx's polling knobs beyond QEMU 10.0's: set on the running IOThread, read back, and
    # refused out of range (PollParams::validate) with the monitor serving on.
    path = "/objects/io1"
    for prop, value in (("poll-weight", 5), ("x-aioctx-poll-min-hit-percent", 40)):
        assert await client.execute("qom-set", {"path": path, "property": prop, "value": value}) == {}
        got = await client.execute("qom-get", {"path": path, "property": prop})
        assert got == value, (prop, got, value)
    io1 = await iothread(client, "io1")
    assert io1["poll-weight"] == 5 and io1["x-aioctx-poll-min-hit-percent"] == 40, io1
    for prop, value in (("poll-weight", 63), ("x-aioctx-poll-min-hit-percent", 101)):
        err = await error_of(client, "qom-set", {"path": path, "property": prop, "value": value})
        assert err["class"] == "GenericError" and "IOThread 'io1'" in err["desc"], (prop, err)
    assert (await iothread(client, "io1"))["poll-weight"] == 5

    # Polling follows qom-set on the running IOThread. The wake-ups of qom-gets (each one a call
    # into the IOThread) come a QMP round trip apart, longer than QEMU's default window of 32768 ns,
    # so io0 polls once its poll-max-ns is 100 ms (the window grows to cover the gaps), and stops
    # polling at all once it is set to 0, although it runs as often.
    async def wake(name, n):
        before = (await iothread(client, name))["x-aioctx-stats"]
        for _ in range(n):
            await client.execute("qom-get", {"path": f"/objects/{name}", "property": "poll-max-ns"})
        after = (await iothread(client, name))["x-aioctx-stats"]
        return before, after
    set_io0 = lambda v: client.execute("qom-set", {"path": "/objects/io0", "property": "poll-max-ns", "value": v})
    await set_io0(100_000_000)
    before, after = await wake("io0", 200)
    assert after["iterations"] >= before["iterations"] + 200, (before, after)
    assert after["poll-ns"] > before["poll-ns"], ("io0 never polled at 100 ms", before, after)
    await set_io0(0)
    before, after = await wake("io0", 200)
    assert after["iterations"] >= before["iterations"] + 200, (before, after)
    assert after["poll-ns"] == before["poll-ns"], ("io0 polled at poll-max-ns 0", before, after)
    assert after["poll-hits"] == before["poll-hits"], (before, after)

    # Out of band: the test blocks the main thread; an in-band command waits in the queue while an
    # exec-oob command is answered on the monitor IOThread.
    handshake("block?", "blocked")
    inband = asyncio.create_task(client.execute("query-version"))
    oob = await asyncio.wait_for(client.execute("query-iothreads", oob=True), 10)
    assert [t["id"] for t in oob] == ["io0", "io1"], oob
    assert not inband.done(), "the in-band command ran while the main thread was blocked"
    handshake("oob-answered", "unblocked")
    assert "qemu" in await asyncio.wait_for(inband, 10)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
