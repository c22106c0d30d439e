'use strict';
// A small promise-based client for credbroker's gRPC API (credbroker.v1.IntegrationService and
// credbroker.v1.ConnectionService). The .proto files are loaded at run time from the repository's
// `protos/` folder with @grpc/proto-loader; nothing is generated or vendored.

const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const REPO_ROOT = path.resolve(__dirname, '..', '..');
const PROTO_FILES = [
  'credbroker/v1/integration_service.proto',
  'credbroker/v1/connection_service.proto',
];
const FIELD_BEHAVIOR = path.join('google', 'api', 'field_behavior.proto');
const DEFAULT_DEADLINE_MS = 5000;

// Same options as the other gRPC clients in this repo's docs: proto field names (snake_case),
// enums as their names, 64-bit integers as strings, defaults filled in, and the name of the set
// member of each oneof (e.g. `credentials.kind === 'api_key'`).
const LOADER_OPTIONS = Object.freeze({
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});

function splitDirs(value) {
  return (value || '').split(path.delimiter).filter(Boolean);
}

function hasFieldBehavior(dir) {
  return fs.existsSync(path.join(dir, FIELD_BEHAVIOR));
}

// The folder holding google/api/field_behavior.proto. protobufjs bundles google/protobuf/*.proto
// (Struct, Timestamp, Empty, FieldMask, descriptor) but not googleapis' google/api protos. They
// ship with Python's googleapis-common-protos, which the server's virtualenv always has, so ask
// that Python where its site-packages are.
function googleApisDir() {
  const candidates = [];
  if (process.env.CREDBROKER_PYTHON) candidates.push(process.env.CREDBROKER_PYTHON);
  candidates.push(path.join(REPO_ROOT, '.venv', 'bin', 'python'), 'python3');
  const errors = [];
  for (const python of candidates) {
    try {
      const out = execFileSync(
        python,
        [
          '-c',
          'import google.api, os; print(os.path.dirname(os.path.dirname(google.api.__path__[0])))',
        ],
        { encoding: 'utf8', timeout: 15000, stdio: ['ignore', 'pipe', 'pipe'] },
      ).trim();
      if (out && hasFieldBehavior(out)) return out;
      errors.push(`${python}: no ${FIELD_BEHAVIOR} under ${out}`);
    } catch (err) {
      errors.push(`${python}: ${err.code || err.message.split('\n')[0]}`);
    }
  }
  throw new Error(
    `cannot find ${FIELD_BEHAVIOR}; set CREDBROKER_PROTO_INCLUDE to a folder holding it ` +
      `(e.g. googleapis' root) or CREDBROKER_PYTHON to a Python with googleapis-common-protos ` +
      `(${errors.join('; ')})`,
  );
}

const packageCache = new Map();

/**
 * Loads the credbroker.v1 package.
 * @param {object} [opts]
 * @param {string} [opts.protosDir] the repo's `protos` folder (default: ../../protos, or
 *   $CREDBROKER_PROTOS_DIR)
 * @param {string[]} [opts.includeDirs] extra include folders, searched before the Python fallback
 *   (default: $CREDBROKER_PROTO_INCLUDE, path-delimited)
 */
function loadProtos(opts = {}) {
  const protosDir = path.resolve(
    opts.protosDir || process.env.CREDBROKER_PROTOS_DIR || path.join(REPO_ROOT, 'protos'),
  );
  const extra = (opts.includeDirs || splitDirs(process.env.CREDBROKER_PROTO_INCLUDE)).map((d) =>
    path.resolve(d),
  );
  const cacheKey = JSON.stringify([protosDir, extra]);
  if (packageCache.has(cacheKey)) return packageCache.get(cacheKey);

  const includeDirs = [protosDir, ...extra];
  if (!includeDirs.some(hasFieldBehavior)) includeDirs.push(googleApisDir());
  const definition = protoLoader.loadSync(PROTO_FILES, { ...LOADER_OPTIONS, includeDirs });
  const pkg = grpc.loadPackageDefinition(definition).credbroker.v1;
  packageCache.set(cacheKey, pkg);
  return pkg;
}

// google.protobuf.Struct helpers. Careful: protobufjs bundles the well-known types
// (google/protobuf/struct.proto, timestamp.proto, ...) as JSON descriptors with camelCase field
// names, and `keepCase: true` keeps those as they are. So while credbroker's own fields are
// snake_case (`integration_id`), a Struct's values are `stringValue`, `numberValue`, ... A Value
// written with `string_value` is silently encoded as an empty Value.

/** A plain JSON object as a google.protobuf.Struct (the shape proto-loader expects). */
function toStruct(obj) {
  const fields = {};
  for (const [k, v] of Object.entries(obj || {})) {
    if (v !== undefined) fields[k] = toValue(v);
  }
  return { fields };
}

function toValue(v) {
  if (v === null) return { nullValue: 'NULL_VALUE' };
  if (Array.isArray(v)) return { listValue: { values: v.map(toValue) } };
  switch (typeof v) {
    case 'string':
      return { stringValue: v };
    case 'number':
      if (!Number.isFinite(v)) throw new TypeError(`cannot put ${v} into a google.protobuf.Struct`);
      return { numberValue: v };
    case 'boolean':
      return { boolValue: v };
    case 'object':
      return { structValue: toStruct(v) };
    default:
      throw new TypeError(`cannot put a ${typeof v} into a google.protobuf.Struct`);
  }
}

/** A google.protobuf.Struct as received (with `oneofs: true`) back into plain JSON. */
function fromStruct(struct) {
  const out = {};
  for (const [k, v] of Object.entries((struct && struct.fields) || {})) out[k] = fromValue(v);
  return out;
}

function fromValue(v) {
  switch (v.kind) {
    case 'nullValue':
      return null;
    case 'numberValue':
      return v.numberValue;
    case 'stringValue':
      return v.stringValue;
    case 'boolValue':
      return v.boolValue;
    case 'structValue':
      return fromStruct(v.structValue);
    case 'listValue':
      return ((v.listValue && v.listValue.values) || []).map(fromValue);
    default:
      return undefined;
  }
}

/**
 * Promise-based credbroker client. Every call sends `authorization: Bearer <secretKey>` and a
 * deadline; a failed call rejects with grpc-js's ServiceError (`code`, `details`, `metadata`;
 * `grpc.status` names the codes).
 *
 *   const client = new CredBrokerClient('127.0.0.1:50051', process.env.CREDBROKER_KEY);
 *   await client.accessCredentials({ integration_id: 'openai-prod', connection_id: 'user-42' });
 */
class CredBrokerClient {
  /**
   * @param {string} target host:port of the server
   * @param {string} secretKey a `cbsk_...` secret key
   * @param {object} [options]
   * @param {grpc.ChannelCredentials} [options.credentials] default: plaintext
   *   (`grpc.credentials.createInsecure()`); use `grpc.credentials.createSsl(...)` for TLS
   * @param {number} [options.deadlineMs] per-call deadline, default 5000
   * @param {object} [options.channelOptions] grpc-js channel options
   * @param {string} [options.protosDir] see loadProtos
   * @param {string[]} [options.includeDirs] see loadProtos
   */
  constructor(target, secretKey, options = {}) {
    if (!target) throw new TypeError('target is required');
    if (!secretKey) throw new TypeError('secretKey is required');
    const pkg = loadProtos(options);
    const credentials = options.credentials || grpc.credentials.createInsecure();
    this.deadlineMs = options.deadlineMs ?? DEFAULT_DEADLINE_MS;
    this._authorization = `Bearer ${secretKey}`;
    this.integrations = new pkg.IntegrationService(target, credentials, options.channelOptions);
    // Both stubs share one channel (one HTTP/2 connection).
    this.connections = new pkg.ConnectionService(target, credentials, {
      ...options.channelOptions,
      channelOverride: this.integrations.getChannel(),
    });
  }

  _call(stub, method, request, callOptions = {}) {
    const metadata = new grpc.Metadata();
    metadata.set('authorization', this._authorization);
    for (const [k, v] of Object.entries(callOptions.metadata || {})) metadata.set(k, v);
    const deadline = new Date(Date.now() + (callOptions.deadlineMs ?? this.deadlineMs));
    return new Promise((resolve, reject) => {
      stub[method](request, metadata, { deadline }, (err, response) =>
        err ? reject(err) : resolve(response),
      );
    });
  }

  // IntegrationService

  /** @param {{integration: object}} request e.g. `{integration: {integration_id, provider}}` */
  createIntegration(request, callOptions) {
    return this._call(this.integrations, 'CreateIntegration', request, callOptions);
  }

  /** @param {{integration_id: string}} request */
  getIntegration(request, callOptions) {
    return this._call(this.integrations, 'GetIntegration', request, callOptions);
  }

  /** @param {{integration_id: string, force?: boolean}} request */
  deleteIntegration(request, callOptions) {
    return this._call(this.integrations, 'DeleteIntegration', request, callOptions);
  }

  // ConnectionService

  /**
   * @param {{connection: object, skip_verification?: boolean}} request; `connection.metadata`
   *   is a google.protobuf.Struct: build it with `toStruct({...})`
   */
  createConnection(request, callOptions) {
    return this._call(this.connections, 'CreateConnection', request, callOptions);
  }

  /** @param {{integration_id: string, connection_id: string}} request */
  getConnection(request, callOptions) {
    return this._call(this.connections, 'GetConnection', request, callOptions);
  }

  /**
   * Returns the decrypted credentials plus `base_url`, `headers` and `query_params` ready to use.
   * @param {{integration_id: string, connection_id: string}} request
   */
  accessCredentials(request, callOptions) {
    return this._call(this.connections, 'AccessCredentials', request, callOptions);
  }

  /** @param {{integration_id?: string, tags?: object, page_size?: number, page_token?: string}} [request] */
  listConnections(request = {}, callOptions) {
    return this._call(this.connections, 'ListConnections', request, callOptions);
  }

  /** @param {{integration_id: string, connection_id: string}} request */
  deleteConnection(request, callOptions) {
    return this._call(this.connections, 'DeleteConnection', request, callOptions);
  }

  /** Closes the channel; pending calls fail with CANCELLED or UNAVAILABLE. */
  close() {
    this.integrations.close();
  }
}

module.exports = {
  CredBrokerClient,
  loadProtos,
  toStruct,
  fromStruct,
  status: grpc.status,
  credentials: grpc.credentials,
};
