"""Traces over OTLP/HTTP to a real receiver started by the test: spans decoded with the
OpenTelemetry protobuf definitions, parented to the client's traceparent, and propagated to the
backend; an unreachable collector changes nothing for requests."""

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from conftest import SESSION_HEADER, Gateway, free_port


class Receiver:
    """An OTLP/HTTP trace receiver (protobuf bodies on POST /v1/traces)."""

    def __init__(self):
        self.spans = []
        received = self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                for rs in request.resource_spans:
                    service = {a.key: a.value.string_value for a in rs.resource.attributes}.get("service.name")
                    for ss in rs.scope_spans:
                        for span in ss.spans:
                            received.append((service, span))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


def test_request_spans_reach_the_collector_and_the_backend_is_their_child(tmp_path):
    receiver = Receiver()
    gw = Gateway(tmp_path, f'[telemetry]\notlp_endpoint = "{receiver.url}"\nexport_interval_ms = 200\n')
    try:
        trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
        sid = f"traced-{uuid.uuid4()}"
        r = httpx.post(
            f"http://{gw.http}/invocations",
            headers={SESSION_HEADER: sid, "traceparent": f"00-{trace_id}-{parent_id}-01", "tracestate": "vendor=1"},
            json={"echo_headers": True},
        )
        assert r.status_code == 200
        seen = r.json()["headers"]
        deadline = time.time() + 10
        while not receiver.spans and time.time() < deadline:
            time.sleep(0.1)
        [(service, span)] = receiver.spans
        assert service == "sessiongate"
        assert span.trace_id.hex() == trace_id
        assert span.parent_span_id.hex() == parent_id
        attrs = {a.key: a.value for a in span.attributes}
        assert attrs["sessiongate.runtime"].string_value == "default"
        assert attrs["sessiongate.session.created"].bool_value is True
        assert attrs["http.response.status_code"].int_value == 200
        assert any(e.name == "session.placement" for e in span.events)
        # The backend received this span as its parent, and the client's tracestate.
        assert seen["traceparent"] == f"00-{trace_id}-{span.span_id.hex()}-01"
        assert seen["tracestate"] == "vendor=1"
    finally:
        gw.stop()
        receiver.stop()


def test_an_unreachable_collector_never_fails_requests(tmp_path):
    gw = Gateway(tmp_path, f'[telemetry]\notlp_endpoint = "http://127.0.0.1:{free_port()}"\nexport_interval_ms = 50\n')
    try:
        for _ in range(20):
            assert httpx.post(f"http://{gw.http}/invocations", json={}).status_code == 200
    finally:
        gw.stop()
