// Reload under load: sticky invocations at a fixed rate while loadtest/reload.sh rewrites and
// reloads the config. Every request must succeed and every session must stay on its backend.
//   k6 run -e HTTP_URL=http://127.0.0.1:8080 loadtest/reload.js
import { post, sessionId, stopSessions } from './lib.js';
import { check } from 'k6';

export const options = {
  scenarios: {
    steady: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 200),
      timeUnit: '1s',
      duration: __ENV.DURATION || '30s',
      preAllocatedVUs: Number(__ENV.VUS || 20),
    },
  },
  thresholds: { checks: ['rate==1'], http_req_failed: ['rate==0'] },
};

const target = __ENV.HTTP_URL || 'http://127.0.0.1:8080';
const firstInstance = {};

export default function () {
  const sid = sessionId('reload', __VU);
  const r = post(`${target}/invocations`, '{"prompt":"reload"}', {
    headers: { 'Content-Type': 'application/json', 'X-Amzn-Bedrock-AgentCore-Runtime-Session-Id': sid },
  });
  const ok = check(r, { 'status 200': (x) => x.status === 200 });
  if (!ok) return;
  const instance = r.json().instance;
  if (firstInstance[sid] === undefined) firstInstance[sid] = instance;
  check(instance, { 'same backend': (i) => i === firstInstance[sid] });
}

export function teardown() {
  stopSessions('reload');
}
