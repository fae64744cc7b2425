// Sticky sessions through a cluster: one session per VU; every answer must come from the
// backend instance that answered the session's first request (a moved session fails the check).
//   k6 run -e HTTP_URL=http://127.0.0.1:8080 loadtest/cluster.js
import { post, sessionId, stopSessions } from './lib.js';
import { check } from 'k6';
import { Counter } from 'k6/metrics';

export const options = {
  vus: Number(__ENV.VUS || 32),
  duration: __ENV.DURATION || '10s',
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'max'],
  thresholds: { checks: ['rate>0.99'] },
};

export const moved = new Counter('sessions_moved');
export const retried = new Counter('client_retries');

const target = __ENV.HTTP_URL || 'http://127.0.0.1:8080';
// `/runtimes/<name>` to reach another runtime than the default one (then set RUNTIME too).
const prefix = __ENV.PATH_PREFIX || '';
const tag = `cluster-${__ENV.RUNTIME || 'default'}`;
const body = JSON.stringify({ prompt: 'hello' });
let first = null;

function invoke(sid) {
  return post(`${target}${prefix}/invocations`, body, {
    headers: { 'Content-Type': 'application/json', 'X-Amzn-Bedrock-AgentCore-Runtime-Session-Id': sid },
  });
}

export default function () {
  const sid = sessionId(tag, __VU);
  let r = invoke(sid);
  if (r.status !== 200) {
    // In flight on a replica that died: the client's one retry reaches another replica.
    retried.add(1);
    r = invoke(sid);
  }
  const instance = r.status === 200 ? r.json('instance') : null;
  if (first === null) first = instance;
  if (instance !== null && instance !== first) moved.add(1);
  check(r, {
    'status 200': (x) => x.status === 200,
    'same backend': () => instance === first,
  });
}

export function teardown() {
  stopSessions(tag);
}
