// A payload near the 100 MB cap: it must arrive whole (the agent reports the bytes it got), and
// one byte over the gateway's cap must be refused with 413.
//   k6 run -e HTTP_URL=http://127.0.0.1:8080 loadtest/upload.js
import { post, sessionId, stopSessions } from './lib.js';
import { check } from 'k6';

export const options = {
  vus: 1,
  iterations: Number(__ENV.ITERATIONS || 3),
  thresholds: { checks: ['rate==1'] },
};

const target = __ENV.HTTP_URL || 'http://127.0.0.1:8080';
const cap = Number(__ENV.CAP || 100000000);
const near = 'x'.repeat(cap - 1000);
const over = near + 'y'.repeat(1001);

export default function () {
  const sid = sessionId('upload', __VU);
  const headers = { 'Content-Type': 'application/octet-stream', 'X-Amzn-Bedrock-AgentCore-Runtime-Session-Id': sid };
  const r = post(`${target}/invocations`, near, { headers, timeout: '120s' });
  check(r, {
    'near the cap: 200': (x) => x.status === 200,
    'near the cap: arrived whole': (x) => x.status === 200 && x.json().bytes === near.length,
  });
  const refused = post(`${target}/invocations`, over, { headers, timeout: '120s' });
  check(refused, { 'over the cap: 413': (x) => x.status === 413 });
}

export function teardown() {
  stopSessions('upload');
}
