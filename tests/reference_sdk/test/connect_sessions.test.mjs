// Connect sessions with the reference backend SDK, @nangohq/node 0.71.10, unchanged:
// createConnectSession and createReconnectSession against a live credbroker, then the browser's
// submission (what @nangohq/frontend's auth() sends) and the backend reading the connection.
// Run by tests/reference_sdk/test_reference_sdk.py (see node_sdk.test.mjs for the variables).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Nango } from '@nangohq/node';

const host = process.env.CREDBROKER_HTTP_URL;
const nango = new Nango({ host, secretKey: process.env.CREDBROKER_KEY });

async function submit(integration, token, apiKey) {
    const response = await fetch(`${host}/api-auth/api-key/${integration}?connect_session_token=${token}`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ apiKey })
    });
    return { status: response.status, body: await response.json() };
}

test('createConnectSession, the browser stores a key, the backend reads it', async () => {
    await nango.createIntegration({ unique_key: 'byok-node', provider: 'api-key' });
    const { data } = await nango.createConnectSession({
        end_user: { id: 'u-node', email: 'node@example.com', display_name: 'Node' },
        organization: { id: 'org-node' },
        allowed_integrations: ['byok-node']
    });
    assert.match(data.token, /^cbcs_[0-9A-Za-z]{49}$/);
    assert.equal(data.connect_link, `${host}/connect?session_token=${data.token}`);
    assert.ok(Date.parse(data.expires_at) > Date.now());

    const stored = await submit('byok-node', data.token, 'sk-node-session-key');
    assert.equal(stored.status, 200);
    assert.equal(stored.body.providerConfigKey, 'byok-node');
    const connection = await nango.getConnection('byok-node', stored.body.connectionId);
    assert.deepEqual(connection.credentials, { type: 'API_KEY', apiKey: 'sk-node-session-key' });
    assert.equal(connection.end_user.id, 'u-node');
    assert.equal(connection.end_user.organization.id, 'org-node');
    assert.equal(connection.tags.end_user_id, 'u-node');

    const reused = await submit('byok-node', data.token, 'sk-other');
    assert.equal(reused.body.error.code, 'connect_session_consumed');

    const reconnect = await nango.createReconnectSession({
        connection_id: stored.body.connectionId,
        integration_id: 'byok-node'
    });
    const replaced = await submit('byok-node', reconnect.data.token, 'sk-node-replaced');
    assert.deepEqual(replaced.body, { connectionId: stored.body.connectionId, providerConfigKey: 'byok-node' });
    const after = await nango.getConnection('byok-node', stored.body.connectionId);
    assert.equal(after.credentials.apiKey, 'sk-node-replaced');
    assert.equal(after.tags.end_user_id, 'u-node');
});

test('createConnectSession refuses what credbroker does not support, by name', async () => {
    await assert.rejects(
        nango.createConnectSession({ end_user: { id: 'x' }, webhook_url_override: 'https://x.example' }),
        (error) => error.response.status === 400 && error.response.data.error.code === 'invalid_body'
    );
});
