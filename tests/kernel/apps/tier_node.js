// An event-loop HTTP service (Node.js, built-in `http` and `net` only) for the trace-linking tests.
//
// Usage: node tier_node.js --log FILE --stock HOST:PORT --redis HOST:PORT
//                          [--pooled] [--max-sockets N] [--sequential] [--bind ADDR]
//
// Every request it serves calls two services: the HTTP service `stock`
// (GET /stock through `http`) and Redis (GET through a RESP client written on
// `net`), both at once (or one after the other with --sequential), forwarding
// the X-Request-Id to stock (Redis gets it in the key).  Connections are new
// for every call, or with --pooled kept alive and reused (an `http.Agent`
// with keepAlive, and a pool of Redis connections), at most --max-sockets per
// service (default: no limit; with a limit, calls wait for a connection to
// free up).  One thread runs all of it, so many requests are in flight on
// that thread at a time.
//
// Prints its port on stdout once listening and serves until stdin closes.
// The ledger is the ground truth of the tests: one JSON line per request
// served, with the request id, the client's port, when it arrived, and per
// call the service, the local port of the connection it went over and when
// it was sent.

'use strict';

const fs = require('fs');
const http = require('http');
const net = require('net');
const { performance } = require('perf_hooks');

function parseArgs(argv) {
  const args = { bind: '127.0.0.1', pooled: false, sequential: false, maxSockets: Infinity };
  for (let i = 0; i < argv.length; i++) {
    const name = argv[i];
    if (name === '--pooled') args.pooled = true;
    else if (name === '--sequential') args.sequential = true;
    else if (name === '--log') args.log = argv[++i];
    else if (name === '--stock') args.stock = argv[++i];
    else if (name === '--redis') args.redis = argv[++i];
    else if (name === '--bind') args.bind = argv[++i];
    else if (name === '--max-sockets') args.maxSockets = Number(argv[++i]);
    else throw new Error(`unknown option ${name}`);
  }
  for (const required of ['log', 'stock', 'redis']) {
    if (!args[required]) throw new Error(`--${required} is required`);
  }
  return args;
}

function hostPort(text) {
  const at = text.lastIndexOf(':');
  return { host: text.slice(0, at), port: Number(text.slice(at + 1)) };
}

// Wall-clock nanoseconds as a decimal string (a JSON number once written).
function nowNs() {
  const us = Math.round((performance.timeOrigin + performance.now()) * 1000);
  return (BigInt(us) * 1000n).toString();
}

// One Redis connection: commands one at a time, replies parsed as RESP2.
class RedisConnection {
  constructor(host, port) {
    this.socket = net.connect(port, host);
    this.socket.setNoDelay(true);
    this.buffer = Buffer.alloc(0);
    this.waiting = null;
    this.broken = null;
    this.socket.on('data', (data) => this.onData(data));
    this.socket.on('error', (err) => this.fail(err));
    this.socket.on('close', () => this.fail(new Error('redis connection closed')));
  }

  fail(err) {
    this.broken = this.broken || err;
    if (this.waiting) {
      const { reject } = this.waiting;
      this.waiting = null;
      reject(err);
    }
  }

  command(args) {
    if (this.broken) return Promise.reject(this.broken);
    let wire = `*${args.length}\r\n`;
    for (const arg of args) wire += `$${Buffer.byteLength(arg)}\r\n${arg}\r\n`;
    return new Promise((resolve, reject) => {
      this.waiting = { resolve, reject };
      this.socket.write(wire);
    });
  }

  onData(data) {
    this.buffer = Buffer.concat([this.buffer, data]);
    const reply = parseReply(this.buffer);
    if (reply === null || !this.waiting) return;
    this.buffer = this.buffer.subarray(reply.length);
    const { resolve } = this.waiting;
    this.waiting = null;
    resolve(reply.value);
  }

  close() {
    this.socket.end();
  }
}

// A simple (status, error, integer or bulk) RESP reply at the start of `buf`, or null if incomplete.
function parseReply(buf) {
  const eol = buf.indexOf('\r\n');
  if (eol < 0) return null;
  const head = buf.toString('latin1', 0, eol);
  if (head[0] !== '$') return { value: head.slice(1), length: eol + 2 };
  const size = Number(head.slice(1));
  if (size < 0) return { value: null, length: eol + 2 };
  if (buf.length < eol + 2 + size + 2) return null;
  return { value: buf.toString('utf8', eol + 2, eol + 2 + size), length: eol + 2 + size + 2 };
}

// Redis connections for the calls: a new one per call, or a pool of at most `max`.
class RedisPool {
  constructor(target, pooled, max) {
    this.target = target;
    this.pooled = pooled;
    this.max = max;
    this.free = [];
    this.open = 0;
    this.queue = [];
  }

  acquire() {
    if (!this.pooled) return Promise.resolve(new RedisConnection(this.target.host, this.target.port));
    while (this.free.length) {
      const conn = this.free.pop();
      if (!conn.broken) return Promise.resolve(conn);
      this.open--;
    }
    if (this.open < this.max) {
      this.open++;
      return Promise.resolve(new RedisConnection(this.target.host, this.target.port));
    }
    return new Promise((resolve) => this.queue.push(resolve));
  }

  release(conn) {
    if (!this.pooled || conn.broken) {
      conn.close();
      if (this.pooled) this.open--;
      return;
    }
    const next = this.queue.shift();
    if (next) next(conn);
    else this.free.push(conn);
  }
}

function callStock(target, agent, requestId) {
  return new Promise((resolve, reject) => {
    // When the request went to the socket: a call may wait for a pooled
    // connection first, and calls are told apart by their order on it.
    let sentNs = null;
    const req = http.request({
      host: target.host, port: target.port, path: '/stock', agent,
      headers: { 'X-Request-Id': requestId },
    }, (res) => {
      const localPort = res.socket.localPort;
      res.resume();
      res.on('end', () => resolve({ target: 'stock', local_port: localPort, sent_ns: sentNs,
                                    status: res.statusCode }));
      res.on('error', reject);
    });
    req.on('finish', () => { sentNs = nowNs(); });
    req.on('error', reject);
    req.end();
  });
}

async function callRedis(pool, requestId) {
  const conn = await pool.acquire();
  const sentNs = nowNs();
  try {
    await conn.command(['GET', `stock:${requestId}`]);
    return { target: 'redis', local_port: conn.socket.localPort, sent_ns: sentNs, status: 'ok' };
  } finally {
    pool.release(conn);
  }
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  const stock = hostPort(args.stock);
  const redis = hostPort(args.redis);
  const agent = new http.Agent({ keepAlive: args.pooled, maxSockets: args.maxSockets });
  const pool = new RedisPool(redis, args.pooled, args.maxSockets);
  const ledger = fs.openSync(args.log, 'a');

  const server = http.createServer(async (req, res) => {
    const requestId = req.headers['x-request-id'] || '';
    const receivedNs = nowNs();
    const peerPort = req.socket.remotePort;
    req.resume();
    let calls;
    try {
      if (args.sequential) {
        calls = [await callStock(stock, agent, requestId), await callRedis(pool, requestId)];
      } else {
        calls = await Promise.all([callStock(stock, agent, requestId), callRedis(pool, requestId)]);
      }
    } catch (err) {
      res.writeHead(502, { 'Content-Type': 'text/plain' });
      res.end(String(err));
      return;
    }
    const body = JSON.stringify({ id: requestId, path: req.url });
    res.writeHead(200, { 'Content-Type': 'application/json',
                         'Content-Length': Buffer.byteLength(body) });
    res.end(body);
    fs.writeSync(ledger, `{"id":${JSON.stringify(requestId)},"path":${JSON.stringify(req.url)},` +
                         `"peer_port":${peerPort},"received_ns":${receivedNs},` +
                         `"calls":${JSON.stringify(calls).replace(/"sent_ns":"(\d+)"/g, '"sent_ns":$1')}}\n`);
  });
  server.listen(0, args.bind, 128, () => {
    process.stdout.write(`${server.address().port}\n`);
  });
  // Serve until the test closes our stdin.
  process.stdin.resume();
  process.stdin.on('end', () => process.exit(0));
  process.on('SIGTERM', () => process.exit(0));
}

main();
