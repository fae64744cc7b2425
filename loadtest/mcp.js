// MCP over streamable HTTP: initialize once per VU, then tools/call in a loop.
import { post, sessionId, stopSessions } from './lib.js';
import { check } from 'k6';

export const options = {
  vus: Number(__ENV.VUS || 16),
  duration: __ENV.DURATION || '10s',
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'max'],
  thresholds: { checks: ['rate>0.999'] },
};

const target = __ENV.MCP_URL || 'http://127.0.0.1:8000';
const base = { 'Content-Type': 'application/json', Accept: 'application/json, text/event-stream' };
let mcpSession = null;

export default function () {
  const headers = { ...base, 'X-Amzn-Bedrock-AgentCore-Runtime-Session-Id': sessionId('mcp', __VU) };
  if (mcpSession === null) {
    const init = post(`${target}/mcp`, JSON.stringify({
      jsonrpc: '2.0', id: 1, method: 'initialize',
      params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'k6', version: '1' } },
    }), { headers });
    check(init, { 'initialize 200': (x) => x.status === 200 });
    mcpSession = init.headers['Mcp-Session-Id'];
  }
  const call = post(`${target}/mcp`, JSON.stringify({
    jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: 'echo', arguments: { text: 'hi' } },
  }), { headers: { ...headers, 'Mcp-Session-Id': mcpSession } });
  check(call, { 'echo': (x) => x.status === 200 && x.json().result.content[0].text === 'hi' });
}

export function teardown() {
  stopSessions('mcp');
}
