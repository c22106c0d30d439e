// The reference backend SDK, @nangohq/node 0.71.10 (pinned in package-lock.json), unchanged,
// against a live credbroker: only `host` and the secret key differ from the reference setup.
// Run by tests/reference_sdk/test_reference_sdk.py, which starts the server and passes:
//   CREDBROKER_HTTP_URL   base URL of the HTTP listener
//   CREDBROKER_KEY        a key with every scope of a fresh environment
//   CREDBROKER_READ_KEY   a key of the same environment with connections:read and
//                         integrations:read only (no credentials:read)
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Nango } from '@nangohq/node';

const host = process.env.CREDBROKER_HTTP_URL;
const nango = new Nango({ host, secretKey: process.env.CREDBROKER_KEY });
const readOnly = new Nango({ host, secretKey: process.env.CREDBROKER_READ_KEY });

const API_KEY = 'sk-node-sdk-canary-41c9';
const PASSWORD = 'pw-node-sdk-canary-77ab';

// The SDK has no method for POST /connections (import); this uses the SDK's own HTTP client
// and headers (nango.http, nango.enrichHeaders) rather than a hand-written client.
async function importConnection(body) {
    const response = await nango.http.post(`${host}/connections`, body, { headers: nango.enrichHeaders({}) });
    return response;
}

async function failure(promise) {
    try {
        await promise;
    } catch (error) {
        assert.ok(error.response, `expected an HTTP error, got ${error}`);
        return { status: error.response.status, body: error.response.data };
    }
    assert.fail('expected the call to fail');
}

test('integrations: create, list, get, update, delete', async () => {
    const created = await nango.createIntegration({ unique_key: 'crm', provider: 'gong', display_name: 'CRM' });
    assert.equal(created.data.unique_key, 'crm');
    assert.equal(created.data.provider, 'gong');
    assert.equal(created.data.display_name, 'CRM');

    const listed = await nango.listIntegrations();
    assert.ok(listed.configs.some((i) => i.unique_key === 'crm'));

    const got = await nango.getIntegration({ uniqueKey: 'crm' }, { include: ['webhook'] });
    assert.equal(got.data.unique_key, 'crm');
    assert.equal(got.data.webhook_url, null);

    const updated = await nango.updateIntegration({ uniqueKey: 'crm' }, { display_name: 'Sales CRM' });
    assert.equal(updated.data.display_name, 'Sales CRM');

    const deleted = await nango.deleteIntegration('crm');
    assert.equal(deleted.status, 200);
    assert.deepEqual(deleted.data, { success: true });
    const gone = await failure(nango.getIntegration({ uniqueKey: 'crm' }));
    assert.equal(gone.status, 404);
    assert.equal(gone.body.error.code, 'unknown_provider_config');
});

test('providers: list with search, get one', async () => {
    const listed = await nango.listProviders({ search: 'openai' });
    assert.ok(listed.data.length >= 1);
    assert.ok(listed.data.every((p) => p.name.includes('openai') || p.display_name.toLowerCase().includes('openai')));
    const provider = await nango.getProvider({ provider: 'openai' });
    assert.equal(provider.data.name, 'openai');
    assert.equal(provider.data.auth_mode, 'API_KEY');
    assert.equal(provider.data.proxy.base_url, 'https://api.openai.com');
    const unknown = await failure(nango.getProvider({ provider: 'no-such-provider' }));
    assert.equal(unknown.status, 404);
});

test("the seed's backend line: getConnection returns the stored key", async () => {
    await nango.createIntegration({ unique_key: 'openai-prod', provider: 'openai' });
    const imported = await importConnection({
        provider_config_key: 'openai-prod',
        connection_id: 'user-42',
        credentials: { type: 'API_KEY', apiKey: API_KEY },
        metadata: { plan: 'pro' },
        tags: { end_user_id: 'u-42' },
        skip_verification: true
    });
    assert.equal(imported.status, 201);
    assert.equal(imported.data.credentials, undefined, 'an import never echoes the key');

    // Exactly the reference guide's call.
    const connection = await nango.getConnection('openai-prod', 'user-42');
    assert.deepEqual(connection.credentials, { type: 'API_KEY', apiKey: API_KEY });
    assert.equal(connection.connection_id, 'user-42');
    assert.equal(connection.provider_config_key, 'openai-prod');
    assert.equal(connection.provider, 'openai');
    assert.deepEqual(connection.metadata, { plan: 'pro' });
    assert.deepEqual(connection.tags, { end_user_id: 'u-42' });
    assert.deepEqual(connection.errors, []);
    assert.equal(connection.credbroker.headers.authorization, `Bearer ${API_KEY}`);

    assert.deepEqual(await nango.getToken('openai-prod', 'user-42'), { type: 'API_KEY', apiKey: API_KEY });
    assert.deepEqual(await nango.getMetadata('openai-prod', 'user-42'), { plan: 'pro' });
});

test('basic credentials round-trip', async () => {
    await nango.createIntegration({ unique_key: 'gong-basic', provider: 'gong' });
    await importConnection({
        provider_config_key: 'gong-basic',
        connection_id: 'team-1',
        credentials: { type: 'BASIC', username: 'access-key', password: PASSWORD }
    });
    const connection = await nango.getConnection('gong-basic', 'team-1');
    assert.deepEqual(connection.credentials, { type: 'BASIC', username: 'access-key', password: PASSWORD });
    assert.match(connection.credbroker.headers.authorization, /^Basic /);
});

test('a key without credentials:read gets the connection without its credentials', async () => {
    const connection = await readOnly.getConnection('openai-prod', 'user-42');
    assert.equal(connection.connection_id, 'user-42');
    assert.equal(connection.credentials, undefined);
    assert.equal(JSON.stringify(connection).includes(API_KEY), false);
    // No `credentials` key at all (the reference sends `{}`), so the SDK's getToken, which reads
    // `credentials.type`, throws instead of returning an empty object.
    await assert.rejects(readOnly.getToken('openai-prod', 'user-42'), TypeError);
    const refused = await failure(readOnly.deleteConnection('openai-prod', 'user-42'));
    assert.equal(refused.status, 403);
    assert.equal(refused.body.error.code, 'forbidden');
});

test('listConnections: both call forms, filters and limit', async () => {
    for (const id of ['a-1', 'a-2', 'b-1']) {
        await importConnection({
            provider_config_key: 'openai-prod',
            connection_id: id,
            credentials: { type: 'API_KEY', apiKey: API_KEY },
            tags: { group: id[0] }
        });
    }
    const all = await nango.listConnections();
    const ids = all.connections.map((c) => c.connection_id);
    for (const id of ['a-1', 'a-2', 'b-1', 'user-42', 'team-1']) {
        assert.ok(ids.includes(id), id);
    }
    assert.ok(all.connections.every((c) => c.credentials === undefined));

    const byId = await nango.listConnections('user-42');
    assert.deepEqual(byId.connections.map((c) => c.connection_id), ['user-42']);
    assert.equal(byId.connections[0].provider, 'openai');

    const searched = await nango.listConnections(undefined, 'A-');
    assert.deepEqual(searched.connections.map((c) => c.connection_id), ['a-1', 'a-2']);

    const filtered = await nango.listConnections({ integrationId: ['openai-prod'], tags: { GROUP: 'a' }, limit: 1 });
    assert.deepEqual(filtered.connections.map((c) => c.connection_id), ['a-1']);
    assert.equal(typeof filtered.next_cursor, 'string');
});

test('patchConnection replaces tags', async () => {
    const patched = await nango.patchConnection(
        { connectionId: 'a-1', provider_config_key: 'openai-prod' },
        { tags: { group: 'z', owner: 'ops' } }
    );
    assert.deepEqual(patched, { success: true });
    const connection = await nango.getConnection('openai-prod', 'a-1');
    assert.deepEqual(connection.tags, { group: 'z', owner: 'ops' });
});

test('setMetadata replaces and updateMetadata merges, for one or several connections', async () => {
    const set = await nango.setMetadata('openai-prod', ['a-1', 'a-2'], { plan: 'team', seats: 3 });
    assert.equal(set.status, 201);
    const merged = await nango.updateMetadata('openai-prod', 'a-1', { seats: 5, region: 'eu' });
    assert.equal(merged.status, 200);
    assert.deepEqual(await nango.getMetadata('openai-prod', 'a-1'), { plan: 'team', seats: 5, region: 'eu' });
    assert.deepEqual(await nango.getMetadata('openai-prod', 'a-2'), { plan: 'team', seats: 3 });

    const unknown = await failure(nango.setMetadata('openai-prod', ['a-2', 'nope'], { x: 1 }));
    assert.equal(unknown.status, 404);
    assert.equal(unknown.body.error.code, 'unknown_connection');
    assert.deepEqual(await nango.getMetadata('openai-prod', 'a-2'), { plan: 'team', seats: 3 });
});

test('deleteConnection, then getConnection fails with unknown_connection', async () => {
    const deleted = await nango.deleteConnection('openai-prod', 'b-1');
    assert.equal(deleted.status, 200);
    assert.deepEqual(deleted.data, { success: true });
    const missing = await failure(nango.getConnection('openai-prod', 'b-1'));
    assert.equal(missing.status, 404);
    assert.equal(missing.body.error.code, 'unknown_connection');
    assert.equal(typeof missing.body.error.message, 'string');
});

test('a wrong secret key is refused with unknown_account and nothing echoed', async () => {
    const wrongKey = 'cbsk_' + '1'.repeat(40);
    const stranger = new Nango({ host, secretKey: wrongKey });
    const refused = await failure(stranger.getConnection('openai-prod', 'user-42'));
    assert.equal(refused.status, 401);
    assert.equal(refused.body.error.code, 'unknown_account');
    assert.equal(JSON.stringify(refused.body).includes(wrongKey), false);
});

test('an end user connected through a connect session: createConnectSession, listConnections({ userId })', async () => {
    const session = await nango.createConnectSession({
        end_user: { id: 'eu-7', email: 'grace@example.com', display_name: 'Grace' },
        organization: { id: 'org-7', display_name: 'Navy' },
        allowed_integrations: ['openai-prod']
    });
    assert.match(session.data.token, /^cbcs_/);
    // What the browser sends (the frontend SDK's POST), made here with the backend SDK's own client.
    const connected = await nango.http.post(
        `${host}/api-auth/api-key/openai-prod?connect_session_token=${session.data.token}`,
        { apiKey: API_KEY },
        { headers: { 'Content-Type': 'application/json' } }
    );
    const connectionId = connected.data.connectionId;

    const byUser = await nango.listConnections({ userId: 'eu-7' });
    assert.deepEqual(byUser.connections.map((c) => c.connection_id), [connectionId]);
    assert.equal(byUser.connections[0].end_user.email, 'grace@example.com');
    const byOrg = await nango.listConnections(undefined, undefined, { endUserOrganizationId: 'org-7' });
    assert.deepEqual(byOrg.connections.map((c) => c.connection_id), [connectionId]);

    const connection = await nango.getConnection('openai-prod', connectionId);
    assert.deepEqual(connection.end_user, {
        id: 'eu-7',
        display_name: 'Grace',
        email: 'grace@example.com',
        tags: {},
        organization: { id: 'org-7', display_name: 'Navy' }
    });
    assert.deepEqual(connection.credentials, { type: 'API_KEY', apiKey: API_KEY });
});

test('createReconnectSession replaces one connection\'s key and keeps its tags and end user', async () => {
    const [connection] = (await nango.listConnections({ userId: 'eu-7' })).connections;
    const session = await nango.createReconnectSession({
        connection_id: connection.connection_id,
        integration_id: 'openai-prod'
    });
    assert.match(session.data.token, /^cbcs_/);
    const replaced = await nango.http.post(
        `${host}/api-auth/api-key/openai-prod?connect_session_token=${session.data.token}`,
        { apiKey: 'sk-node-sdk-reconnected' },
        { headers: { 'Content-Type': 'application/json' } }
    );
    assert.deepEqual(replaced.data, { connectionId: connection.connection_id, providerConfigKey: 'openai-prod' });
    const after = await nango.getConnection('openai-prod', connection.connection_id);
    assert.deepEqual(after.credentials, { type: 'API_KEY', apiKey: 'sk-node-sdk-reconnected' });
    assert.deepEqual(after.tags, connection.tags);
    assert.equal(after.end_user.id, 'eu-7');
    await assert.rejects(
        nango.createConnectSession({ end_user: { id: 'x' }, webhook_url_override: 'https://x.example' }),
        (error) => error.response.status === 400 && error.response.data.error.code === 'invalid_body'
    );
});
