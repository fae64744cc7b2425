// WebSocket echo: each iteration opens a socket in the VU's session and echoes MESSAGES frames.
import { connect, sessionId, stopSessions } from './lib.js';
import { check } from 'k6';

export const options = {
  vus: Number(__ENV.VUS || 16),
  duration: __ENV.DURATION || '10s',
  thresholds: { checks: ['rate>0.999'] },
};

const target = __ENV.WS_URL || 'ws://127.0.0.1:8080';
const messages = Number(__ENV.MESSAGES || 10);

export default function () {
  const sid = sessionId('ws', __VU);
  let echoed = 0;
  const res = connect(`${target}/ws`, { headers: { 'X-Amzn-Bedrock-AgentCore-Runtime-Session-Id': sid } }, (socket) => {
    socket.on('open', () => socket.send('m0'));
    socket.on('message', (m) => {
      if (m === `m${echoed}`) echoed += 1;
      if (echoed < messages) socket.send(`m${echoed}`);
      else socket.close();
    });
    socket.setTimeout(() => socket.close(), 5000);
  });
  check(res, { 'status 101': (r) => r && r.status === 101 });
  check(echoed, { 'all echoed': (n) => n === messages });
}

export function teardown() {
  stopSessions('ws');
}
