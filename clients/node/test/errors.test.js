'use strict';
// Status codes of failed calls, against the real server started by run-tests.sh.
const assert = require('node:assert/strict');
const { after, before, describe, test } = require('node:test');

const { status } = require('..');
const { newClient, requireServer, uniqueId } = require('./helpers');

describe('errors', () => {
  let client;
  let integration_id;

  before(async () => {
    client = newClient();
    integration_id = uniqueId('openai-node-errors');
    await client.createIntegration({ integration: { integration_id, provider: 'openai' } });
  });

  after(async () => {
    await client.deleteIntegration({ integration_id, force: true }).catch(() => {});
    client.close();
  });

  test('GetConnection of a missing connection is NOT_FOUND (5)', async () => {
    await assert.rejects(
      client.getConnection({ integration_id, connection_id: 'no-such-connection' }),
      (err) => {
        assert.equal(err.code, 5);
        assert.equal(err.code, status.NOT_FOUND);
        assert.equal(typeof err.details, 'string');
        return true;
      },
    );
    // A missing integration answers the same way.
    await assert.rejects(
      client.getConnection({ integration_id: uniqueId('missing'), connection_id: 'x' }),
      { code: status.NOT_FOUND },
    );
  });

  test('a wrong secret key is UNAUTHENTICATED (16)', async () => {
    const { key } = requireServer();
    // Same shape as the real key with the last character changed: fails the checksum. And a
    // key that is no credbroker key at all.
    const last = key.slice(-1) === 'A' ? 'B' : 'A';
    for (const wrongKey of [key.slice(0, -1) + last, 'not-a-key']) {
      const wrong = newClient(wrongKey);
      try {
        await assert.rejects(wrong.getIntegration({ integration_id }), (err) => {
          assert.equal(err.code, 16, `key ${JSON.stringify(wrongKey.slice(0, 12))}...`);
          assert.equal(err.code, status.UNAUTHENTICATED);
          assert.ok(!err.details.includes(wrongKey), 'the error does not echo the key');
          return true;
        });
      } finally {
        wrong.close();
      }
    }
  });

  test('credentials of the wrong auth mode are INVALID_ARGUMENT (3)', async () => {
    // openai takes an API key; a Basic credential is refused and nothing is stored.
    await assert.rejects(
      client.createConnection({
        connection: {
          integration_id,
          connection_id: 'wrong-mode',
          credentials: { basic: { username: 'u', password: 'p' } },
        },
        skip_verification: true,
      }),
      (err) => {
        assert.equal(err.code, 3);
        assert.equal(err.code, status.INVALID_ARGUMENT);
        return true;
      },
    );
    await assert.rejects(client.getConnection({ integration_id, connection_id: 'wrong-mode' }), {
      code: status.NOT_FOUND,
    });
  });
});
