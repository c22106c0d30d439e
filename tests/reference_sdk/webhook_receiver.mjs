// A webhook receiver that checks every request with the reference SDK, unchanged:
// `new Nango({ secretKey, webhookSigningKey }).verifyIncomingWebhookRequest(rawBody, headers)`.
//
// Usage: node webhook_receiver.mjs CERT.pem KEY.pem
// Serves HTTPS on 127.0.0.1 (a free port, printed as the first stdout line {"port": N}). Each
// stdin line {"keys": [...]} sets the signing keys to check with (kept off the command line);
// each request prints one JSON line {"event_id", "verified": [true|false for each key]} and is
// answered 200 when some key verified it, 401 otherwise. Stops on SIGTERM or when stdin closes.
import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';
import { createInterface } from 'node:readline';
import { Nango } from '@nangohq/node';

const [certFile, keyFile] = process.argv.slice(2);
let verifiers = [];
createInterface({ input: process.stdin })
    .on('line', (line) => {
        verifiers = JSON.parse(line).keys.map(
            (webhookSigningKey) => new Nango({ secretKey: 'not-used-for-webhooks', webhookSigningKey })
        );
        process.stdout.write(JSON.stringify({ keys: verifiers.length }) + '\n');
    })
    .on('close', () => server.close(() => process.exit(0)));

const server = createServer({ cert: readFileSync(certFile), key: readFileSync(keyFile) }, (req, res) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
        const body = Buffer.concat(chunks).toString('utf8');
        const verified = verifiers.map((nango) => nango.verifyIncomingWebhookRequest(body, req.headers));
        let eventId = null;
        try {
            eventId = JSON.parse(body).event_id ?? null;
        } catch {
            eventId = null;
        }
        process.stdout.write(JSON.stringify({ event_id: eventId, verified }) + '\n');
        res.writeHead(verified.some(Boolean) ? 200 : 401, { 'content-type': 'application/json' });
        res.end('{}');
    });
});
server.listen(0, '127.0.0.1', () => {
    process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n');
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
