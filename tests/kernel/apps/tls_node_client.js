// HTTPS requests from node over one kept-alive connection, one after another.
// argv: port, count.  Waits for a line on stdin, prints "<path> <status> <local port>"
// per request, then "done".
const https = require('https');
const readline = require('readline');

const port = Number(process.argv[2]);
const count = Number(process.argv[3]);
const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });

function get(path) {
  return new Promise((resolve, reject) => {
    const req = https.get({ host: '127.0.0.1', port, path, agent, rejectUnauthorized: false }, (res) => {
      res.resume();
      res.on('end', () => resolve([res.statusCode, req.socket.localPort]));
    });
    req.on('error', reject);
  });
}

const rl = readline.createInterface({ input: process.stdin });
rl.once('line', async () => {
  for (let i = 0; i < count; i++) {
    const path = `/${i % 7 === 3 ? 'missing' : 'item'}/${i}`;
    const [status, localPort] = await get(path);
    console.log(`${path} ${status} ${localPort}`);
  }
  console.log('done');
  agent.destroy();
  rl.close();
});
