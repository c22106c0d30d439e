'use strict';
// Against the real server started by run-tests.sh (credential verification off: no internet).
const assert = require('node:assert/strict');
const { after, before, describe, test } = require('node:test');

const { fromStruct, toStruct } = require('..');
const { newClient, uniqueId } = require('./helpers');

describe('credentials round trip', () => {
  let client;
  const created = [];

  before(() => {
    client = newClient();
  });

  after(async () => {
    for (const integration_id of created) {
      await client.deleteIntegration({ integration_id, force: true }).catch(() => {});
    }
    client.close();
  });

  async function createIntegration(provider) {
    const integration_id = uniqueId(`${provider}-node`);
    const integration = await client.createIntegration({ integration: { integration_id, provider } });
    created.push(integration_id);
    return integration;
  }

  test('stores an API key and AccessCredentials returns it with ready-to-use headers', async () => {
    const integration = await createIntegration('openai');
    assert.equal(integration.provider, 'openai');
    assert.equal(integration.auth_mode, 'AUTH_MODE_API_KEY');
    const integration_id = integration.integration_id;
    const apiKey = `sk-node-test-${uniqueId('k')}`;

    const connection = await client.createConnection({
      connection: {
        integration_id,
        connection_id: 'user-42',
        credentials: { api_key: { api_key: apiKey } },
        metadata: toStruct({ plan: 'pro', seats: 3 }),
        tags: { end_user_id: '42' },
      },
    });
    assert.equal(connection.integration_id, integration_id);
    assert.equal(connection.connection_id, 'user-42');
    assert.equal(connection.credentials_set, true);
    assert.equal(connection.credentials, null, 'Connection responses never carry credentials');
    assert.equal(connection.auth_mode, 'AUTH_MODE_API_KEY');
    assert.ok(connection.etag);
    assert.match(connection.create_time.seconds, /^\d+$/);

    const fetched = await client.getConnection({ integration_id, connection_id: 'user-42' });
    assert.deepEqual(fromStruct(fetched.metadata), { plan: 'pro', seats: 3 });
    assert.deepEqual(fetched.tags, { end_user_id: '42' });
    assert.equal(fetched.credentials, null);

    const access = await client.accessCredentials({ integration_id, connection_id: 'user-42' });
    assert.equal(access.credentials.kind, 'api_key');
    assert.equal(access.credentials.api_key.api_key, apiKey);
    assert.equal(access.auth_mode, 'AUTH_MODE_API_KEY');
    assert.equal(access.base_url, 'https://api.openai.com');
    assert.deepEqual(access.headers, { authorization: `Bearer ${apiKey}` });
    assert.deepEqual(access.query_params, {});

    const byTag = await client.listConnections({ integration_id, tags: { end_user_id: '42' } });
    assert.deepEqual(
      byTag.connections.map((c) => c.connection_id),
      ['user-42'],
    );
    const none = await client.listConnections({ integration_id, tags: { end_user_id: '43' } });
    assert.deepEqual(none.connections, []);

    await client.deleteConnection({ integration_id, connection_id: 'user-42' });
    await assert.rejects(client.getConnection({ integration_id, connection_id: 'user-42' }), {
      code: 5,
    });
  });

  test('stores a Basic credential for twilio and returns it with a Basic header', async () => {
    const integration = await createIntegration('twilio');
    assert.equal(integration.auth_mode, 'AUTH_MODE_BASIC');
    const integration_id = integration.integration_id;
    const username = 'AC0123456789abcdef0123456789abcdef';
    const password = `auth-token-${uniqueId('p')}:with colon and ünicode`;

    const connection = await client.createConnection({
      connection: { integration_id, credentials: { basic: { username, password } } },
      skip_verification: true,
    });
    // No connection_id given: the server generates a UUID.
    assert.match(connection.connection_id, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    assert.equal(connection.auth_mode, 'AUTH_MODE_BASIC');
    assert.equal(connection.credentials_set, true);

    const access = await client.accessCredentials({
      integration_id,
      connection_id: connection.connection_id,
    });
    assert.equal(access.credentials.kind, 'basic');
    assert.deepEqual(access.credentials.basic, { username, password });
    assert.equal(access.auth_mode, 'AUTH_MODE_BASIC');
    assert.equal(access.base_url, 'https://api.twilio.com');
    const basic = Buffer.from(`${username}:${password}`, 'utf8').toString('base64');
    assert.deepEqual(access.headers, { authorization: `Basic ${basic}` });
  });
});
