// An HTTPS server (node's https, OpenSSL inside the node binary) on 127.0.0.1.
// argv: certificate file, key file.  Prints the port once listening.
const fs = require('fs');
const https = require('https');

const server = https.createServer({ cert: fs.readFileSync(process.argv[2]), key: fs.readFileSync(process.argv[3]) },
  (req, res) => {
    const status = req.url.startsWith('/missing') ? 404 : 200;
    const body = `hello ${req.url}\n`;
    res.writeHead(status, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
  });
server.keepAliveTimeout = 30000;
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
