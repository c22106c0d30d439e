'use strict';
// Usage: node scripts/wait-for-server.js HOST:PORT [TIMEOUT_SECONDS]
// Polls grpc.health.v1.Health/Check (no key needed) until the server answers SERVING; exits 0
// then, 1 on timeout. Hand-encoded messages keep it free of a health .proto: the request is the
// empty HealthCheckRequest (service ""), SERVING is the response bytes 08 01 (field 1 = 1).

const grpc = require('@grpc/grpc-js');

const [target, timeoutArg] = process.argv.slice(2);
if (!target) {
  console.error('usage: wait-for-server.js HOST:PORT [TIMEOUT_SECONDS]');
  process.exit(2);
}
const giveUpAt = Date.now() + Number(timeoutArg || 20) * 1000;
const client = new grpc.Client(target, grpc.credentials.createInsecure());

function check() {
  return new Promise((resolve) => {
    client.makeUnaryRequest(
      '/grpc.health.v1.Health/Check',
      () => Buffer.alloc(0),
      (buf) => buf,
      {},
      new grpc.Metadata(),
      { deadline: new Date(Date.now() + 1000) },
      (err, response) => resolve(err ? err.details || String(err.code) : response),
    );
  });
}

(async () => {
  let last = 'no answer';
  while (Date.now() < giveUpAt) {
    const result = await check();
    if (Buffer.isBuffer(result)) {
      if (result.equals(Buffer.from([0x08, 0x01]))) {
        client.close();
        process.exit(0);
      }
      last = `health answered ${result.toString('hex') || '(empty: UNKNOWN)'}`;
    } else {
      last = result;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  console.error(`server at ${target} not serving in time: ${last}`);
  client.close();
  process.exit(1);
})();
