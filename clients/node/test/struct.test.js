'use strict';
// Offline: no server needed.
const assert = require('node:assert/strict');
const { test } = require('node:test');

const { loadProtos, toStruct, fromStruct } = require('..');

test('toStruct builds the proto-loader shape of google.protobuf.Struct', () => {
  assert.deepEqual(toStruct({ plan: 'pro', seats: 3 }), {
    fields: { plan: { stringValue: 'pro' }, seats: { numberValue: 3 } },
  });
});

test('metadata survives protobuf encoding through toStruct and fromStruct', () => {
  const method = loadProtos().ConnectionService.service.CreateConnection;
  const value = { plan: 'pro', seats: 3, beta: true, none: null, nested: { a: [1, 'x', false] } };
  const bytes = method.requestSerialize({ connection: { metadata: toStruct(value) } });
  const decoded = method.requestDeserialize(bytes);
  assert.deepEqual(fromStruct(decoded.connection.metadata), value);
});
