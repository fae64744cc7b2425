// Small JSON invocations, one sticky session per VU.
//   k6 run -e TARGET=http://127.0.0.1:8080 loadtest/invoke.js
import { post, sessionId, stopSessions } from './lib.js';
import { check } from 'k6';

export const options = {
  vus: Number(__ENV.VUS || 32),
  duration: __ENV.DURATION || '10s',
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'max'],
  thresholds: { checks: ['rate>0.999'] },
};

const target = __ENV.HTTP_URL || 'http://127.0.0.1:8080';
const body = JSON.stringify({ prompt: 'hello' });

export default function () {
  const sid = sessionId('invoke', __VU);
  const r = post(`${target}/invocations`, body, {
    headers: { 'Content-Type': 'application/json', 'X-Amzn-Bedrock-AgentCore-Runtime-Session-Id': sid },
  });
  check(r, { 'status 200': (x) => x.status === 200 });
}

export function teardown() {
  stopSessions('invoke');
}
