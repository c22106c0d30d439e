'use strict';
// Shared by the tests: the server under test comes from run-tests.sh.
const crypto = require('node:crypto');

const { CredBrokerClient } = require('..');

const TARGET = process.env.CREDBROKER_TARGET;
const KEY = process.env.CREDBROKER_KEY;

function requireServer() {
  if (!TARGET || !KEY) {
    throw new Error(
      'CREDBROKER_TARGET and CREDBROKER_KEY must name a running credbroker server and a secret ' +
        'key: run `bash clients/node/run-tests.sh`, which starts one',
    );
  }
  return { target: TARGET, key: KEY };
}

function newClient(key) {
  const server = requireServer();
  return new CredBrokerClient(server.target, key ?? server.key);
}

// Unique per test file and run, so reruns against one database never collide.
function uniqueId(prefix) {
  return `${prefix}-${Date.now().toString(36)}-${crypto.randomBytes(4).toString('hex')}`;
}

module.exports = { newClient, requireServer, uniqueId };
