// SSE streams: each iteration reads a whole stream of EVENTS events.
import { post, sessionId, stopSessions } from './lib.js';
import { check } from 'k6';

export const options = {
  vus: Number(__ENV.VUS || 16),
  duration: __ENV.DURATION || '10s',
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'max'],
  thresholds: { checks: ['rate>0.999'] },
};

const target = __ENV.HTTP_URL || 'http://127.0.0.1:8080';
const events = Number(__ENV.EVENTS || 5);
const body = JSON.stringify({ stream: events, interval_ms: Number(__ENV.INTERVAL_MS || 10) });

export default function () {
  const sid = sessionId('sse', __VU);
  const r = post(`${target}/invocations`, body, {
    headers: { 'Content-Type': 'application/json', 'X-Amzn-Bedrock-AgentCore-Runtime-Session-Id': sid },
  });
  check(r, {
    'status 200': (x) => x.status === 200,
    'all events': (x) => (x.body.match(/^data: /gm) || []).length === events,
  });
}

export function teardown() {
  stopSessions('sse');
}
