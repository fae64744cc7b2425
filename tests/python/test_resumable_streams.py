"""Resumable SSE (`runtimes[].resumable_streams`): the gateway numbers a stream's events, keeps
them while the agent streams on without its client, and a client that reconnects with
`Last-Event-ID` gets exactly what it missed, then the live rest. Memory is bounded: a client
that fell further behind than the buffer is told so, never handed a stream with a hole."""

import json
import uuid

import httpx

from conftest import SESSION_HEADER, Gateway

CONFIG = """
[resumable_streams]
buffer_bytes_per_session = 65536
retention_secs = 60

[[runtimes]]
name = "default"
resumable_streams = true
"""


def events(lines):
    """SSE events as (id, data) from an iterator of lines, as an SSE client parses them."""
    event_id, data = None, []
    for line in lines:
        if line == "":
            if data:
                yield event_id, json.loads("\n".join(data))
            event_id, data = None, []
        elif line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def test_a_client_that_drops_mid_stream_resumes_without_loss_or_duplicates(tmp_path):
    gw = Gateway(tmp_path, CONFIG)
    try:
        sid = f"resume-{uuid.uuid4()}"
        headers = {SESSION_HEADER: sid}
        url = f"http://{gw.http}/invocations"
        got, last = [], None
        # Read three events, then drop the connection while the agent streams on.
        with httpx.stream("POST", url, json={"stream": 12, "interval_ms": 150}, headers=headers,
                          timeout=30) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            for event_id, data in events(r.iter_lines()):
                got.append(data["index"])
                last = event_id
                if len(got) == 3:
                    break
        assert got == [0, 1, 2] and last.endswith(".3")
        # Reconnect with the last id seen: the missed events, then the live ones, to the end.
        with httpx.stream("POST", url, content=b"", headers={**headers, "Last-Event-ID": last},
                          timeout=30) as r:
            assert r.status_code == 200
            resumed = list(events(r.iter_lines()))
        got += [data["index"] for _, data in resumed]
        assert got == list(range(12)), got
        ids = [last] + [i for i, _ in resumed]
        assert len(set(ids)) == len(ids) and ids[-1].endswith(".12")
        # Resuming again from the middle of the finished stream replays its tail.
        stream = last.split(".")[0]
        with httpx.stream("POST", url, content=b"", headers={**headers, "Last-Event-ID": f"{stream}.9"},
                          timeout=30) as r:
            assert [d["index"] for _, d in events(r.iter_lines())] == [9, 10, 11]
        assert 'sessiongate_stream_resumes_total{outcome="resumed"} 2' in gw.metrics()
        # A non-streaming answer of the same runtime passes as it is.
        plain = httpx.post(url, json={"prompt": "x"}, headers=headers, timeout=30)
        assert plain.status_code == 200 and plain.json()["session_id"] == sid
        # An id this gateway never sent, or a stream it does not have, is a clear 404/refusal.
        for bad in ("not-an-id", "99.1"):
            r = httpx.post(url, content=b"", headers={**headers, "Last-Event-ID": bad}, timeout=30)
            assert r.status_code == 404 and r.headers["x-amzn-errortype"] == "ResourceNotFoundException"
        # A resumption never starts a session.
        r = httpx.post(url, content=b"", timeout=30,
                       headers={SESSION_HEADER: f"never-{uuid.uuid4()}", "Last-Event-ID": "1.1"})
        assert r.status_code == 404
    finally:
        gw.stop()


def test_a_client_further_behind_than_the_buffer_is_told_so(tmp_path):
    gw = Gateway(tmp_path, CONFIG.replace("65536", "4096"))
    try:
        sid = f"evicted-{uuid.uuid4()}"
        headers = {SESSION_HEADER: sid}
        url = f"http://{gw.http}/invocations"
        # ~200 bytes an event: 60 events are far more than 4 KiB.
        with httpx.stream("POST", url, json={"stream": 60, "interval_ms": 5}, headers=headers,
                          timeout=30) as r:
            first_id, _ = next(events(r.iter_lines()))
        # Wait for the stream to end without its client (it runs on), then resume from its start.
        for _ in range(100):
            probe = httpx.post(url, content=b"", headers={**headers, "Last-Event-ID": "1.60"}, timeout=30)
            if probe.status_code == 200 and probe.text == "":
                break
        r = httpx.post(url, content=b"", headers={**headers, "Last-Event-ID": first_id}, timeout=30)
        assert r.status_code == 404 and "evicted" in r.json()["message"]
        metrics = gw.metrics()
        assert 'sessiongate_replay_evicted_events_total{reason="session_cap"}' in metrics
        assert 'sessiongate_stream_resumes_total{outcome="evicted"} 1' in metrics
        buffered = [line for line in metrics.splitlines() if line.startswith("sessiongate_replay_buffer_bytes ")]
        assert buffered and float(buffered[0].split()[1]) <= 4096
    finally:
        gw.stop()
