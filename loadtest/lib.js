// What the AWS SDKs do with a throttled call (botocore's retry handler): wait as long as the
// answer's Retry-After says, then try again. The gateway throttles as AgentCore does (25 new
// sessions/s, 1 000 requests/s per caller), so a script that did not back off would measure its
// own impatience. Each wait is counted in the `throttled` metric, shown in k6's summary.
import http from 'k6/http';
import ws from 'k6/ws';
import { sleep } from 'k6';
import exec from 'k6/execution';
import { Counter } from 'k6/metrics';

export const throttled = new Counter('throttled');

// The longest one call keeps retrying, in seconds.
const MAX_WAIT_S = Number(__ENV.MAX_RETRY_WAIT_S || 30);

// 429 (rate or quota), 503 (connection cap) and MCP's JSON-RPC -32003, which comes with HTTP 200.
function isThrottled(r) {
  if (r.status === 429 || r.status === 503) return true;
  return r.status === 200 && typeof r.body === 'string' && r.body.includes('"code":-32003');
}

function retryAfter(r, waited) {
  const header = r.headers && (r.headers['Retry-After'] || r.headers['retry-after']);
  const secs = Number(header) > 0 ? Number(header) : 1;
  return Math.min(secs, MAX_WAIT_S - waited);
}

function withRetries(attempt) {
  let waited = 0;
  for (;;) {
    const r = attempt();
    if (!r || !isThrottled(r) || waited >= MAX_WAIT_S) return r;
    throttled.add(1);
    const secs = retryAfter(r, waited);
    sleep(secs);
    waited += secs;
  }
}

// `http.post`, retried while throttled.
export function post(url, body, params) {
  return withRetries(() => http.post(url, body, params));
}

// `ws.connect`, retried while the upgrade is throttled.
export function connect(url, params, handler) {
  return withRetries(() => ws.connect(url, params, handler));
}

// Ends the sticky session of every VU (`${prefix}-${vu}-…`, as the scripts name them) with
// StopRuntimeSession, as a well-behaved client does when it is done: a gateway counts an
// anonymous caller's live sessions per address (100 by default), and k6 runs from one address.
// Call it from `teardown()`.
export function stopSessions(prefix) {
  const vus = Math.max(
    1,
    ...Object.values(exec.test.options.scenarios || {}).map((s) => s.vus || s.maxVUs || s.preAllocatedVUs || 1),
  );
  const httpUrl = __ENV.HTTP_URL || 'http://127.0.0.1:8080';
  const runtime = __ENV.RUNTIME || 'default';
  for (let vu = 1; vu <= vus; vu++) {
    post(`${httpUrl}/runtimes/${runtime}/stopruntimesession`, '{}', {
      headers: { 'X-Amzn-Bedrock-AgentCore-Runtime-Session-Id': sessionId(prefix, vu) },
      // A session that already ended (idle, or never started) is fine.
      responseCallback: http.expectedStatuses(200, 404),
    });
  }
}

// The session id of VU `vu` in a script: 33+ characters, as AgentCore requires.
export function sessionId(prefix, vu) {
  return `k6-${prefix}-${vu}-0123456789abcdef0123456789abcdef`;
}
