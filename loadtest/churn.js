// Session churn: every iteration starts a new session (the gateway mints the id), invokes
// once, and stops it with StopRuntimeSession.
import { post } from './lib.js';
import { check } from 'k6';

export const options = {
  vus: Number(__ENV.VUS || 8),
  duration: __ENV.DURATION || '10s',
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'max'],
  thresholds: { checks: ['rate>0.999'] },
};

const target = __ENV.HTTP_URL || 'http://127.0.0.1:8080';
const runtime = __ENV.RUNTIME || 'default';
// `/runtimes/<name>` to reach another runtime than the default one.
const prefix = __ENV.PATH_PREFIX || '';

export default function () {
  const r = post(`${target}${prefix}/invocations`, '{}', { headers: { 'Content-Type': 'application/json' } });
  check(r, { 'invoke 200': (x) => x.status === 200 });
  const sid = r.headers['X-Amzn-Bedrock-Agentcore-Runtime-Session-Id'];
  const stop = post(`${target}/runtimes/${runtime}/stopruntimesession`, '{}', {
    headers: { 'X-Amzn-Bedrock-AgentCore-Runtime-Session-Id': sid },
  });
  check(stop, { 'stop 200': (x) => x.status === 200 });
}
