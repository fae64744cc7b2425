// Mixed traffic at a steady rate, for loadtest/soak: sync invocations, SSE, WebSocket, MCP, A2A
// and session churn, each its own scenario, all on a fixed set of sticky sessions except churn.
//   k6 run -e HTTP_URL=… -e MCP_URL=… -e A2A_URL=… -e WS_URL=… -e DURATION=20m [-e SCENARIOS=mcp,a2a] loadtest/soak.js
import http from 'k6/http';
import ws from 'k6/ws';
import { check } from 'k6';

const duration = __ENV.DURATION || '1m';
const http_url = __ENV.HTTP_URL || 'http://127.0.0.1:8080';
const mcp_url = __ENV.MCP_URL || 'http://127.0.0.1:8000';
const a2a_url = __ENV.A2A_URL || 'http://127.0.0.1:9000';
const ws_url = __ENV.WS_URL || 'ws://127.0.0.1:8080';
const rate = (name, per_s, vus) => ({
  executor: 'constant-arrival-rate', exec: name, rate: per_s, timeUnit: '1s', duration,
  preAllocatedVUs: vus, maxVUs: vus * 4,
});

const all = {
  invoke: rate('invoke', 100, 10),
  sse: rate('sse', 10, 5),
  websocket: rate('websocket', 5, 5),
  mcp: rate('mcp', 50, 5),
  a2a: rate('a2a', 20, 5),
  churn: rate('churn', 5, 5),
};
// SCENARIOS=mcp,churn runs only those (to find which traffic a growth comes from).
const only = (__ENV.SCENARIOS || '').split(',').filter(Boolean);

export const options = {
  scenarios: Object.fromEntries(Object.entries(all).filter(([name]) => !only.length || only.includes(name))),
  thresholds: { checks: ['rate>0.999'] },
};

const sid = (kind) => `k6-soak-${kind}-${__VU % 8}-0123456789abcdef0123456789abcdef`;
const json = (kind) => ({ headers: { 'Content-Type': 'application/json', 'X-Amzn-Bedrock-AgentCore-Runtime-Session-Id': sid(kind) } });

export function invoke() {
  const r = http.post(`${http_url}/invocations`, '{"prompt":"soak"}', json('invoke'));
  check(r, { 'invoke 200': (x) => x.status === 200 });
}

export function sse() {
  const r = http.post(`${http_url}/invocations`, '{"stream":5,"interval_ms":20}', json('sse'));
  check(r, { 'sse all events': (x) => x.status === 200 && (x.body.match(/^data: /gm) || []).length === 5 });
}

export function websocket() {
  let echoed = 0;
  const res = ws.connect(`${ws_url}/ws`, { headers: { 'X-Amzn-Bedrock-AgentCore-Runtime-Session-Id': sid('ws') } }, (s) => {
    s.on('open', () => s.send('m0'));
    s.on('message', () => { echoed += 1; if (echoed < 5) s.send(`m${echoed}`); else s.close(); });
    s.setTimeout(() => s.close(), 5000);
  });
  check(res, { 'ws 101': (r) => r && r.status === 101 });
  check(echoed, { 'ws echoed': (n) => n === 5 });
}

export function mcp() {
  const headers = { ...json('mcp').headers, Accept: 'application/json, text/event-stream' };
  const init = http.post(`${mcp_url}/mcp`, JSON.stringify({
    jsonrpc: '2.0', id: 1, method: 'initialize',
    params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'soak', version: '1' } },
  }), { headers });
  const id = init.headers['Mcp-Session-Id'];
  const call = http.post(`${mcp_url}/mcp`, JSON.stringify({
    jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: 'echo', arguments: { text: 'soak' } },
  }), { headers: { ...headers, 'Mcp-Session-Id': id } });
  check(call, { 'mcp echo': (x) => x.status === 200 && x.body.includes('soak') });
}

export function a2a() {
  const r = http.post(`${a2a_url}/`, JSON.stringify({
    jsonrpc: '2.0', id: 1, method: 'message/send',
    params: { message: { role: 'user', messageId: `m-${__ITER}`, parts: [{ kind: 'text', text: 'soak' }] } },
  }), json('a2a'));
  check(r, { 'a2a 200': (x) => x.status === 200 && x.body.includes('result') });
}

export function churn() {
  const r = http.post(`${http_url}/invocations`, '{}', { headers: { 'Content-Type': 'application/json' } });
  const id = r.headers['X-Amzn-Bedrock-Agentcore-Runtime-Session-Id'];
  const stop = http.post(`${http_url}/runtimes/default/stopruntimesession`, '{}', {
    headers: { 'X-Amzn-Bedrock-AgentCore-Runtime-Session-Id': id },
  });
  check(stop, { 'churn started and stopped': (x) => r.status === 200 && x.status === 200 });
}
