// A partner's side of the smartregion query protocol, in Node.js (docs/querying.md).
//
// Everything here follows the contract in proto/smartregion/v1/*.proto:
//   * the partner key: our keystore file (scrypt + AES-256-GCM), read with node:crypto;
//   * pinning: fetch the hub's TLS certificate, check its identity binding derives the hub id
//     you were given out of band, then trust exactly that certificate, server name = hub id;
//   * signed requests: serialize a `Request` once, Ed25519 over
//     "smartregion/v1/request" || 0x00 || payload;
//   * signed partials: Ed25519 over "smartregion/v1/partial-result" || 0x00 || partial, by a
//     key whose hub id is the first 16 bytes of SHA-256("smartregion/v1/hub-id" || 0x00 || key);
//   * sealed partials: each provider encrypts its signed partial to this query's X25519 key
//     (HPKE, RFC 9180 base mode), so the entry hub relays what it cannot read; we open and merge;
//   * the signed answer: the entry hub's Ed25519 over "smartregion/v1/query-answer" || 0x00 ||
//     summary, an AnswerSummary of every hub asked with its status and sealed partial's digest.
//
// Dependencies: @grpc/grpc-js (the calls), @grpc/proto-loader (the service, from proto/ at run
// time) and protobufjs (the messages that are signed or carried as bytes: a gRPC stub alone
// cannot encode a `Request` or decode a `PartialResult` or `AnswerSummary`). Crypto is Node's
// built-in.

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';

export const RUN_METHOD = '/smartregion.v1.Query/Run';
export const DEFAULT_PROTO_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'proto');
const CALL_TIMEOUT_MS = 10_000;
const DEFAULT_DEADLINE_MS = 10_000;

const domain = (name) => Buffer.from(`smartregion/v1/${name}\0`, 'latin1');
const DOMAIN = {
  request: domain('request'),
  partial: domain('partial-result'),
  answer: domain('query-answer'),
  agreement: domain('agreement'),
  tlsBinding: domain('tls-binding'),
  descriptor: domain('descriptor'),
  keyRotation: domain('key-rotation'),
  hubId: domain('hub-id'),
  partnerId: domain('partner-id'),
};
// The identity binding in a hub's TLS certificate (node/identity.py).
const TLS_BINDING_OID = '2.25.203920180945178712633153802452796473511';

export class SmartregionError extends Error {}

// -- ids and Ed25519 keys ----------------------------------------------------------------------

const sha256 = (...parts) => crypto.createHash('sha256').update(Buffer.concat(parts)).digest();

export function hubIdFromPublicKey(raw) {
  if (raw.length !== 32) throw new SmartregionError('an Ed25519 public key is 32 bytes');
  return sha256(DOMAIN.hubId, raw).subarray(0, 16).toString('hex');
}

export function partnerIdFromPublicKey(raw) {
  if (raw.length !== 32) throw new SmartregionError('an Ed25519 public key is 32 bytes');
  return sha256(DOMAIN.partnerId, raw).subarray(0, 16).toString('hex');
}

// Raw 32-byte keys in the DER wrappers Node's crypto takes (RFC 8410).
const PKCS8_ED25519_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');
const SPKI_ED25519_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

export function ed25519PrivateKey(seed) {
  if (seed.length !== 32) throw new SmartregionError('an Ed25519 private key is 32 bytes');
  return crypto.createPrivateKey({ key: Buffer.concat([PKCS8_ED25519_PREFIX, seed]), format: 'der', type: 'pkcs8' });
}

export function ed25519PublicKey(raw) {
  if (raw.length !== 32) throw new SmartregionError('an Ed25519 public key is 32 bytes');
  return crypto.createPublicKey({ key: Buffer.concat([SPKI_ED25519_PREFIX, raw]), format: 'der', type: 'spki' });
}

export function rawPublicKey(keyObject) {
  return keyObject.export({ format: 'der', type: 'spki' }).subarray(SPKI_ED25519_PREFIX.length);
}

function verifyEd25519(rawKey, message, signature) {
  try {
    return crypto.verify(null, message, ed25519PublicKey(Buffer.from(rawKey)), Buffer.from(signature));
  } catch {
    return false;
  }
}

// -- the partner key file (node/keystore.py) ---------------------------------------------------

/** The passphrase as the smartregion CLI finds it: SMARTREGION_PASSPHRASE, else the first line
 * of the file named by SMARTREGION_PASSPHRASE_FILE. */
export function passphraseFromEnvironment(env = process.env) {
  if (env.SMARTREGION_PASSPHRASE) return Buffer.from(env.SMARTREGION_PASSPHRASE, 'utf8');
  if (env.SMARTREGION_PASSPHRASE_FILE) {
    const text = fs.readFileSync(env.SMARTREGION_PASSPHRASE_FILE, 'utf8');
    // Python's str.splitlines() boundaries, so both read the same first line.
    const first = text.split(/\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]/)[0];
    if (first) return Buffer.from(first, 'utf8');
  }
  throw new SmartregionError('no passphrase: set SMARTREGION_PASSPHRASE, or SMARTREGION_PASSPHRASE_FILE to a file holding it');
}

/** Exactly Python's json.dumps(value, sort_keys=True) (default separators, ensure_ascii), for
 * the JSON values a keystore's "kdf" holds. The keystore's AES-GCM associated data is this
 * serialization of {"format", "version", "kdf"}; one byte off and decryption fails. */
export function pythonJsonSorted(value) {
  if (value === null) return 'null';
  if (value === true) return 'true';
  if (value === false) return 'false';
  if (typeof value === 'string') {
    return JSON.stringify(value).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  }
  if (typeof value === 'number') {
    // JSON.parse cannot tell 1 from 1.0, and Python writes them differently: accept integers only.
    if (!Number.isSafeInteger(value)) throw new SmartregionError(`unsupported number ${value} in the keystore's kdf`);
    return String(value);
  }
  if (Array.isArray(value)) return `[${value.map(pythonJsonSorted).join(', ')}]`;
  if (typeof value === 'object') {
    const byCodePoint = (a, b) => {
      const x = [...a].map((c) => c.codePointAt(0));
      const y = [...b].map((c) => c.codePointAt(0));
      for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i];
      return x.length - y.length;
    };
    const keys = Object.keys(value).sort(byCodePoint);
    return `{${keys.map((k) => `${pythonJsonSorted(k)}: ${pythonJsonSorted(value[k])}`).join(', ')}}`;
  }
  throw new SmartregionError(`unsupported value in the keystore's kdf: ${typeof value}`);
}

const KEYSTORE_FORMAT = 'smartregion-keystore';

/** Decrypt a smartregion keystore file: {name: Buffer} of the secrets it holds. */
export function unsealKeystore(fileBytes, passphrase) {
  let doc;
  try {
    doc = JSON.parse(fileBytes.toString('utf8'));
  } catch (err) {
    throw new SmartregionError(`the keystore is damaged: ${err.message}`);
  }
  if (doc.format !== KEYSTORE_FORMAT || doc.version !== 1) throw new SmartregionError('not a smartregion keystore (version 1)');
  const kdf = doc.kdf;
  if (!kdf || kdf.name !== 'scrypt') throw new SmartregionError(`unsupported key derivation ${JSON.stringify(kdf?.name)}`);
  const [N, r, p] = [kdf.n, kdf.r, kdf.p].map(Number);
  const key = crypto.scryptSync(passphrase, Buffer.from(kdf.salt, 'base64'), 32, { N, r, p, maxmem: 256 * N * r + 64 * 1024 * 1024 });
  // The associated data: json.dumps({"format": ..., "version": 1, "kdf": kdf}, sort_keys=True),
  // with the kdf object exactly as it stands in the file.
  const aad = Buffer.from(pythonJsonSorted({ format: KEYSTORE_FORMAT, version: 1, kdf }), 'utf8');
  const sealed = Buffer.from(doc.ciphertext, 'base64'); // ciphertext || 16-byte tag
  if (sealed.length < 16) throw new SmartregionError('the keystore is damaged: ciphertext too short');
  const decipher = crypto.createDecipheriv('aes-256-gcm', key, Buffer.from(doc.nonce, 'base64'));
  decipher.setAAD(aad);
  decipher.setAuthTag(sealed.subarray(sealed.length - 16));
  let plaintext;
  try {
    plaintext = Buffer.concat([decipher.update(sealed.subarray(0, sealed.length - 16)), decipher.final()]);
  } catch {
    throw new SmartregionError('wrong passphrase, or the keystore was altered');
  }
  return Object.fromEntries(Object.entries(JSON.parse(plaintext.toString('utf8'))).map(([k, v]) => [k, Buffer.from(v, 'base64')]));
}

/** The partner key from `smartregion partner keygen --out FILE`: {privateKey, publicKey, partnerId, name}. */
export function loadPartnerKey(file, passphrase = passphraseFromEnvironment()) {
  const secrets = unsealKeystore(fs.readFileSync(file), passphrase);
  if (!secrets.partner_key) throw new SmartregionError(`${file} is a keystore, but not a partner key`);
  const privateKey = ed25519PrivateKey(secrets.partner_key);
  const publicKey = rawPublicKey(crypto.createPublicKey(privateKey));
  return { privateKey, publicKey, partnerId: partnerIdFromPublicKey(publicKey), name: (secrets.name ?? Buffer.alloc(0)).toString('utf8') };
}

// -- pinning a hub by its hub id -----------------------------------------------------------------

export function splitAddress(address) {
  const at = address.lastIndexOf(':');
  const host = address.slice(0, at).replace(/^\[|\]$/g, '');
  const port = Number(address.slice(at + 1));
  if (at <= 0 || !host || !Number.isInteger(port) || port <= 0 || port > 65535) throw new SmartregionError(`${JSON.stringify(address)} is not HOST:PORT`);
  return { host, port };
}

/** The certificate the server at `address` presents: NOT trusted yet (see hubIdOfCertificate). */
export function fetchCertificate(address, timeoutMs = CALL_TIMEOUT_MS) {
  const { host, port } = splitAddress(address);
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host, port, rejectUnauthorized: false, ALPNProtocols: ['h2'] });
    const fail = (err) => {
      socket.destroy();
      reject(new SmartregionError(`cannot reach ${address} over TLS: ${err.message}`));
    };
    socket.setTimeout(timeoutMs, () => fail(new Error('timed out')));
    socket.once('error', fail);
    socket.once('secureConnect', () => {
      const cert = socket.getPeerX509Certificate();
      socket.end();
      if (!cert) reject(new SmartregionError(`the server at ${address} presented no certificate`));
      else resolve(cert);
    });
  });
}

// A minimal DER reader: just enough to find one extension in a certificate.
function derElements(buf) {
  const out = [];
  let at = 0;
  while (at < buf.length) {
    const tag = buf[at];
    let length = buf[at + 1];
    let header = 2;
    if (length & 0x80) {
      const n = length & 0x7f;
      if (n === 0 || n > 4) throw new SmartregionError('unsupported DER length');
      length = 0;
      for (let i = 0; i < n; i++) length = length * 256 + buf[at + 2 + i];
      header += n;
    }
    if (at + header + length > buf.length) throw new SmartregionError('truncated DER');
    out.push({ tag, value: buf.subarray(at + header, at + header + length) });
    at += header + length;
  }
  return out;
}

function derOid(dotted) {
  const arcs = dotted.split('.').map(BigInt);
  const base128 = (n) => {
    const bytes = [Number(n & 0x7fn)];
    for (n >>= 7n; n > 0n; n >>= 7n) bytes.unshift(Number((n & 0x7fn) | 0x80n));
    return bytes;
  };
  return Buffer.from([arcs[0] * 40n + arcs[1], ...arcs.slice(2)].flatMap(base128));
}

function extensionValue(certDer, oid) {
  const [certificate] = derElements(certDer);
  const [tbs] = derElements(certificate.value);
  const explicit = derElements(tbs.value).find((e) => e.tag === 0xa3); // [3] extensions
  if (!explicit) return null;
  const [extensions] = derElements(explicit.value);
  const wanted = derOid(oid);
  for (const ext of derElements(extensions.value)) {
    const parts = derElements(ext.value);
    if (parts[0]?.tag === 0x06 && parts[0].value.equals(wanted)) return parts[parts.length - 1].value; // extnValue
  }
  return null;
}

/** The hub id a certificate is bound to (node/identity.py): its extension holds the hub's
 * identity key and that key's signature over "smartregion/v1/tls-binding" || 0x00 || SPKI. */
export function hubIdOfCertificate(cert) {
  const { commonName, identityKey } = certificateBinding(cert);
  const hubId = hubIdFromPublicKey(identityKey);
  if (commonName !== hubId) throw new SmartregionError("the certificate's common name is not the hub id of its identity key");
  return hubId;
}

/** The hub id a certificate names and the identity key that signed its binding. For a hub that
 * rotated its identity key the two are linked only by its key history (see keysOfHub). */
export function certificateBinding(cert) {
  const value = extensionValue(cert.raw, TLS_BINDING_OID);
  if (!value) throw new SmartregionError("the server's certificate carries no smartregion identity binding");
  if (value.length !== 2 + 32 + 64 || value[0] !== 0x04 || value[1] !== 0x60) throw new SmartregionError('malformed identity binding in the certificate');
  const identityKey = value.subarray(2, 34);
  const spki = cert.publicKey.export({ type: 'spki', format: 'der' });
  if (!verifyEd25519(identityKey, Buffer.concat([DOMAIN.tlsBinding, spki]), value.subarray(34))) {
    throw new SmartregionError("the certificate's identity binding signature is invalid");
  }
  const commonName = cert.subject.split('\n').find((line) => line.startsWith('CN='))?.slice(3);
  return { commonName, identityKey };
}

// -- key histories (node/keychain.py; docs/protocol.md "Key rotation statements") -------------

const STATEMENT_LENGTH = 220; // hub id 16, sequence 4, old key 32, new key 32, time 8; two signatures

/** Every identity key of hub `hubId`, genesis first, by its key history (rotation statements,
 * oldest first). With no history the hub's one key is `genesis`, which must hash to the id.
 * Throws naming the first break: a wrong sequence, a missing signature, a gap, a reused key. */
export function keysOfHub(hubId, history, genesis) {
  if (history.length === 0) {
    if (!genesis || genesis.length !== 32 || hubIdFromPublicKey(Buffer.from(genesis)) !== hubId) {
      throw new SmartregionError(`hub ${hubId} has no key history and the key given is not its genesis key`);
    }
    return [Buffer.from(genesis)];
  }
  const keys = [];
  let previousAt = 0n;
  history.forEach((raw, i) => {
    const s = Buffer.from(raw);
    const where = `rotation ${i + 1} of hub ${hubId}`;
    if (s.length !== STATEMENT_LENGTH) throw new SmartregionError(`${where} is not ${STATEMENT_LENGTH} bytes`);
    const payload = s.subarray(0, 92);
    const [oldKey, newKey, at] = [s.subarray(20, 52), s.subarray(52, 84), s.readBigUInt64BE(84)];
    if (i === 0) {
      if (hubIdFromPublicKey(oldKey) !== hubId) throw new SmartregionError(`the key history does not start at the genesis key of hub ${hubId}`);
      keys.push(oldKey);
    }
    if (s.subarray(0, 16).toString('hex') !== hubId) throw new SmartregionError(`${where} is a statement of another hub`);
    if (s.readUInt32BE(16) !== i + 1) throw new SmartregionError(`${where} carries sequence number ${s.readUInt32BE(16)}, expected ${i + 1}`);
    if (!oldKey.equals(keys[keys.length - 1])) throw new SmartregionError(`${where} does not continue from the key the previous rotation ended with`);
    if (keys.some((k) => k.equals(newKey))) throw new SmartregionError(`${where} returns to a key the hub used before`);
    if (at < previousAt) throw new SmartregionError(`${where} is dated before the rotation it follows`);
    const message = Buffer.concat([DOMAIN.keyRotation, payload]);
    if (!verifyEd25519(oldKey, message, s.subarray(92, 156))) throw new SmartregionError(`${where} is not signed by the old key`);
    if (!verifyEd25519(newKey, message, s.subarray(156, 220))) throw new SmartregionError(`${where} is not signed by the new key`);
    keys.push(newKey);
    previousAt = at;
  });
  return keys;
}

/** Whether `key` is one of hub `hubId`'s keys by its (possibly empty) key history: a signature
 * by any key of a valid history is the hub's (node/keychain.py says why). */
export function isKeyOfHub(hubId, key, history) {
  try {
    return keysOfHub(hubId, history ?? [], key).some((k) => k.equals(Buffer.from(key)));
  } catch {
    return false;
  }
}

// -- protobuf and gRPC ---------------------------------------------------------------------------

/** The message types (protobufjs) and the Query service (proto-loader), from proto/ at run time. */
export function loadContract(protoDir = DEFAULT_PROTO_DIR) {
  const file = ['smartregion/v1/query_service.proto', 'smartregion/v1/federation.proto'];
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => path.join(protoDir, target);
  root.loadSync([...file, 'smartregion/v1/agreement.proto'], { keepCase: true });
  const packageDefinition = protoLoader.loadSync(file, {
    includeDirs: [protoDir], keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true,
  });
  const api = grpc.loadPackageDefinition(packageDefinition).smartregion.v1;
  return {
    Request: root.lookupType('smartregion.v1.Request'),
    PartialResult: root.lookupType('smartregion.v1.PartialResult'),
    SignedPartial: root.lookupType('smartregion.v1.SignedPartial'),
    AnswerSummary: root.lookupType('smartregion.v1.AnswerSummary'),
    QueryAnswer: root.lookupType('smartregion.v1.QueryAnswer'),
    NodeDescriptor: root.lookupType('smartregion.v1.NodeDescriptor'),
    SignedTerms: root.lookupType('smartregion.v1.SignedTerms'),
    AgreementTerms: root.lookupType('smartregion.v1.AgreementTerms'),
    QueryClient: api.Query,
    FederationClient: api.Federation,
  };
}

/** Channel credentials that trust exactly `cert`. A hub's certificate is signed by the hub's
 * own TLS issuer, not by itself; Node's TLS accepts a trusted certificate that is not
 * self-signed as the end of the chain only with allowPartialTrustChain (Node 20.18 / 22.9). */
function pinnedCredentials(cert) {
  const secureContext = tls.createSecureContext({ ca: cert.toString(), allowPartialTrustChain: true });
  return grpc.credentials.createFromSecureContext(secureContext);
}

/** Connect to the hub at `address` that must be hub `hubId`: fetch its certificate, check the
 * pin, and open a channel that trusts exactly that certificate under the name `hubId`. */
export async function connectPinned(contract, address, hubId) {
  const cert = await fetchCertificate(address);
  const { commonName, identityKey } = certificateBinding(cert);
  if (commonName !== hubId) throw new SmartregionError(`the server at ${address} is hub ${commonName}, not hub ${hubId}`);
  const credentials = pinnedCredentials(cert);
  const options = {
    'grpc.ssl_target_name_override': hubId, // the certificate's name is the hub id
    'grpc.default_authority': hubId,
    'grpc.max_receive_message_length': 16 * 1024 * 1024,
  };
  if (hubIdFromPublicKey(identityKey) !== hubId) { // a hub that rotated its identity key
    await checkRotatedHub(contract, address, credentials, options, hubId, identityKey, cert);
  }
  return new contract.QueryClient(address, credentials, options);
}

/** The certificate of a hub that rotated is bound to its current key; its signed descriptor
 * (Federation.GetDescriptor) carries the key history linking that key to the hub id. */
async function checkRotatedHub(contract, address, credentials, options, hubId, identityKey, cert) {
  const client = new contract.FederationClient(address, credentials, options);
  const signed = await new Promise((resolve, reject) => {
    client.GetDescriptor({}, { deadline: new Date(Date.now() + CALL_TIMEOUT_MS) }, (err, reply) => (err ? reject(err) : resolve(reply)));
  }).finally(() => client.close());
  const bytes = Buffer.from(signed.descriptor ?? []);
  const d = contract.NodeDescriptor.toObject(contract.NodeDescriptor.decode(bytes), { longs: Number, defaults: true });
  const fail = (why) => new SmartregionError(`hub ${hubId} at ${address}: ${why}`);
  if (d.hub_id !== hubId) throw fail(`the descriptor names hub ${d.hub_id}`);
  if (!verifyEd25519(d.identity_public_key, Buffer.concat([DOMAIN.descriptor, bytes]), signed.signature ?? [])) throw fail('the descriptor is not signed by its key');
  let keys;
  try {
    keys = keysOfHub(hubId, d.key_history, d.identity_public_key);
  } catch (err) {
    throw fail(`the key history is broken: ${err.message}`);
  }
  if (!keys[keys.length - 1].equals(Buffer.from(d.identity_public_key)) || !identityKey.equals(Buffer.from(d.identity_public_key))) {
    throw fail('the certificate is not bound to the current key of its key history');
  }
  if (!sha256(cert.raw).equals(Buffer.from(d.tls_certificate_sha256))) throw fail('the descriptor names another certificate');
  if (d.valid_until_ms <= Date.now()) throw fail('the descriptor has expired');
}

/** A query spec without the fields left at their defaults (proto3 would not send them). */
function compact(spec) {
  return Object.fromEntries(Object.entries(spec).filter(([, v]) => !(v === undefined || v === 0 || v === '' || (Array.isArray(v) && v.length === 0))));
}

/** Build, serialize ONCE, and sign a Request for Query.Run (envelope.proto). */
export function signQuery(contract, key, audienceHubId, spec) {
  const request = contract.Request.fromObject({
    caller_id: key.partnerId,
    audience_hub_id: audienceHubId,
    method: RUN_METHOD,
    issued_at_ms: Date.now(),
    nonce: crypto.randomBytes(16),
    query: compact(spec),
  });
  const payload = Buffer.from(contract.Request.encode(request).finish());
  const signature = crypto.sign(null, Buffer.concat([DOMAIN.request, payload]), key.privateKey);
  return { payload, signature };
}

export function runQuery(client, signed, deadlineMs) {
  const timeoutMs = (deadlineMs || DEFAULT_DEADLINE_MS) + 5_000; // the hubs' deadline, plus merging
  return new Promise((resolve, reject) => {
    client.Run(signed, { deadline: new Date(Date.now() + timeoutMs) }, (err, answer) => (err ? reject(err) : resolve(answer)));
  });
}

// -- the answer: each hub's partial sealed to this query's key (HPKE, RFC 9180) -------------------

const SPKI_X25519_PREFIX = Buffer.from('302a300506032b656e032100', 'hex');
const SEAL_INFO_PREFIX = domain('sealed-partial');

/** A fresh X25519 key pair for one query; `raw` is the 32-byte public key for QuerySpec.answer_key. */
export function newAnswerKey() {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('x25519');
  const raw = Buffer.from(publicKey.export({ format: 'jwk' }).x, 'base64url');
  return { privateKey, raw };
}

const i2osp = (n, length) => { const b = Buffer.alloc(length); b.writeUIntBE(n, 0, length); return b; };
const hmac = (key, ...parts) => crypto.createHmac('sha256', key).update(Buffer.concat(parts)).digest();
const HPKE_V1 = Buffer.from('HPKE-v1', 'latin1');
const labeledExtract = (suiteId, salt, label, ikm) => hmac(salt.length ? salt : Buffer.alloc(32), HPKE_V1, suiteId, Buffer.from(label, 'latin1'), ikm);
// HKDF-Expand for L <= 32: one block of HMAC-SHA256.
const labeledExpand = (suiteId, prk, label, info, length) =>
  hmac(prk, i2osp(length, 2), HPKE_V1, suiteId, Buffer.from(label, 'latin1'), info, Buffer.from([1])).subarray(0, length);

/** RFC 9180 base mode, single shot: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM, empty
 * associated data. `sealed` is enc (32 bytes) || ciphertext || tag (16 bytes). */
export function hpkeOpen(sealed, answerKey, info) {
  if (sealed.length < 32 + 16) throw new SmartregionError('a sealed partial is too short');
  const enc = sealed.subarray(0, 32);
  const ephemeral = crypto.createPublicKey({ key: Buffer.concat([SPKI_X25519_PREFIX, enc]), format: 'der', type: 'spki' });
  const dh = crypto.diffieHellman({ privateKey: answerKey.privateKey, publicKey: ephemeral });
  const kemSuite = Buffer.concat([Buffer.from('KEM', 'latin1'), i2osp(0x0020, 2)]);
  const eaePrk = labeledExtract(kemSuite, Buffer.alloc(0), 'eae_prk', dh);
  const sharedSecret = labeledExpand(kemSuite, eaePrk, 'shared_secret', Buffer.concat([enc, answerKey.raw]), 32);
  const suite = Buffer.concat([Buffer.from('HPKE', 'latin1'), i2osp(0x0020, 2), i2osp(0x0001, 2), i2osp(0x0001, 2)]);
  const context = Buffer.concat([Buffer.from([0]), labeledExtract(suite, Buffer.alloc(0), 'psk_id_hash', Buffer.alloc(0)),
    labeledExtract(suite, Buffer.alloc(0), 'info_hash', info)]);
  const secret = labeledExtract(suite, sharedSecret, 'secret', Buffer.alloc(0));
  const key = labeledExpand(suite, secret, 'key', context, 16);
  const nonce = labeledExpand(suite, secret, 'base_nonce', context, 12); // sequence number 0
  const body = sealed.subarray(32, sealed.length - 16);
  const decipher = crypto.createDecipheriv('aes-128-gcm', key, nonce);
  decipher.setAuthTag(sealed.subarray(sealed.length - 16));
  return Buffer.concat([decipher.update(body), decipher.final()]);
}

/** Strip the ISO/IEC 7816-4 padding of an opened partial: trailing 0x00 bytes, then one 0x80. */
export function unpad(padded, hubId) {
  let end = padded.length;
  while (end > 0 && padded[end - 1] === 0x00) end -= 1;
  if (end === 0 || padded[end - 1] !== 0x80) throw new SmartregionError(`hub ${hubId}: the opened partial is not padded (no 0x80 marker)`);
  return padded.subarray(0, end - 1);
}

/** Check an answer before using it: it answers the query you signed, the hub you asked signed
 * what every hub answered; open every sealed partial, check each provider's signature, and
 * merge. Throws on any mismatch; returns { rows, verified } and fills each provenance's partial. */
export function openAnswer(contract, answer, sentPayload, entryHubId, answerKey, spec, askerPublicKey) {
  const echoed = Buffer.from(answer.query?.payload ?? []);
  if (!echoed.equals(sentPayload)) throw new SmartregionError('the hub answered a different query than the one signed');
  const digest = sha256(echoed);
  verifySummary(contract, answer, digest, entryHubId);
  checkComplete(answer, spec);
  const partials = openPartials(contract, answer, digest, answerKey, spec, partnerIdFromPublicKey(Buffer.from(askerPublicKey)));
  answer.rows = mergePartials(partials, spec);
  answer.asker_public_key = askerPublicKey; // so the answer file's query signature checks offline
  return answer.provenance.filter((p) => p.status === 'answered').map((p) => p.hub_id);
}

/** docs/querying.md 7.4 step 6: the answer lists every hub (and municipality) the signed query
 * named and no other, and `partial`/`missing_hubs` are exactly the hubs that did not answer;
 * otherwise the entry hub could drop a hub and present the rest as complete. */
export function checkComplete(answer, spec) {
  const listed = answer.provenance.map((p) => p.hub_id);
  const hubIds = spec.hub_ids ?? [];
  const municipalities = spec.municipalities ?? [];
  const missingFrom = (wanted, got) => [...new Set(wanted)].filter((x) => !got.includes(x)).sort();
  if (hubIds.length && !municipalities.length && missingFrom(hubIds, listed).length) {
    throw new SmartregionError(`the answer does not list exactly the hubs asked; not listed: ${missingFrom(hubIds, listed).join(', ')}`);
  }
  if (hubIds.length && missingFrom(listed, hubIds).length) {
    throw new SmartregionError(`the answer lists hubs not asked: ${missingFrom(listed, hubIds).join(', ')}`);
  }
  if (municipalities.length) {
    const named = answer.provenance.map((p) => p.municipality);
    if (missingFrom(named, municipalities).length) {
      throw new SmartregionError(`the answer lists municipalities not asked: ${missingFrom(named, municipalities).join(', ')}`);
    }
    if (missingFrom(municipalities, named).length) {
      throw new SmartregionError(`the answer lists no hub of municipality ${missingFrom(municipalities, named).join(', ')}`);
    }
  }
  const notAnswered = answer.provenance.filter((p) => p.status !== 'answered').map((p) => p.hub_id);
  const missing = answer.missing_hubs ?? [];
  if (Boolean(answer.partial) !== notAnswered.length > 0 || missing.length !== notAnswered.length
      || missing.some((h, i) => h !== notAnswered[i])) {
    throw new SmartregionError("the answer's partial flag and missing hubs are not the hubs that did not answer");
  }
}

/** The entry hub's signature over an AnswerSummary, and that the summary is this answer. */
export function verifySummary(contract, answer, digest, entryHubId) {
  const key = Buffer.from(answer.answered_by_public_key ?? []);
  if (key.length !== 32 || !isKeyOfHub(answer.answered_by, key, answer.answered_by_key_history)) {
    throw new SmartregionError('the answer names an entry hub whose key it does not carry');
  }
  if (answer.answered_by !== entryHubId) throw new SmartregionError(`the answer was signed by hub ${answer.answered_by}, not by hub ${entryHubId}`);
  const bytes = Buffer.from(answer.summary ?? []);
  if (!verifyEd25519(key, Buffer.concat([DOMAIN.answer, bytes]), answer.summary_signature ?? [])) {
    throw new SmartregionError("the entry hub's signature over the answer does not verify");
  }
  const signed = contract.AnswerSummary.toObject(contract.AnswerSummary.decode(bytes), { longs: Number, defaults: true });
  const sameSource = (p, i) => {
    const q = answer.provenance[i];
    const sealed = Buffer.from(q.sealed_partial ?? []);
    const expectedDigest = sealed.length ? sha256(sealed) : Buffer.alloc(0);
    return p.hub_id === q.hub_id && p.municipality === q.municipality && p.status === q.status && p.reason === q.reason
      && p.agreement_id === q.agreement_id && Buffer.from(p.partial_digest).equals(expectedDigest)
      && Buffer.from(p.agreement_digest).equals(q.agreement?.length ? sha256(Buffer.from(q.agreement)) : Buffer.alloc(0));
  };
  const matches = Buffer.from(signed.query_digest).equals(digest)
    && signed.answered_by === answer.answered_by
    && signed.partial === answer.partial
    && signed.merged_at_ms > 0
    && signed.rows.length === 0
    && signed.missing_hubs.length === answer.missing_hubs.length && signed.missing_hubs.every((h, i) => h === answer.missing_hubs[i])
    && signed.provenance.length === answer.provenance.length && signed.provenance.every(sameSource);
  if (!matches) throw new SmartregionError('the answer differs from what the entry hub signed');
}

/** docs/querying.md 7.5 step 6: the partial speaks for the municipality YOU co-signed for this
 * provider. The entry hub relays the agreement (serialized SignedTerms) signed by the provider
 * and by you; its provider party binds the hub id to a kommunenummer. */
export function checkAgreement(contract, p, partial, partnerId) {
  const bytes = Buffer.from(p.agreement ?? []);
  let signed;
  let terms;
  try {
    signed = contract.SignedTerms.decode(bytes);
    terms = contract.AgreementTerms.toObject(contract.AgreementTerms.decode(signed.terms), { longs: Number, defaults: true });
  } catch {
    throw new SmartregionError(`hub ${p.hub_id}: the agreement it answered under does not parse`);
  }
  const { provider, consumer } = terms;
  if (!bytes.length || terms.agreement_id !== partial.agreement_id || provider.id !== partial.provider_hub_id
      || provider.public_key.length !== 32 || hubIdFromPublicKey(Buffer.from(provider.public_key)) !== provider.id
      || consumer.id !== partnerId || consumer.public_key.length !== 32 || partnerIdFromPublicKey(Buffer.from(consumer.public_key)) !== partnerId) {
    throw new SmartregionError(`hub ${p.hub_id}: the answer does not carry its agreement ${partial.agreement_id} with you`);
  }
  const keys = { [provider.id]: provider.public_key, [consumer.id]: consumer.public_key };
  const signers = signed.signatures.map((s) => s.signer_id).sort();
  if (signers.length !== 2 || signers.join() !== Object.keys(keys).sort().join()) {
    throw new SmartregionError(`hub ${p.hub_id}: agreement ${terms.agreement_id} is not signed by both parties`);
  }
  for (const s of signed.signatures) {
    if (!verifyEd25519(keys[s.signer_id], Buffer.concat([DOMAIN.agreement, Buffer.from(signed.terms)]), s.signature)) {
      throw new SmartregionError(`hub ${p.hub_id}: a signature over agreement ${terms.agreement_id} does not verify`);
    }
  }
  if (provider.municipality !== partial.municipality) {
    throw new SmartregionError(`hub ${p.hub_id}: the partial speaks for municipality ${partial.municipality}, `
      + `agreement ${terms.agreement_id} names ${provider.municipality || 'none'}`);
  }
}

/** Open every answered hub's sealed partial and check it: the provider's signature, the hub id
 * derived from the signing key, this exact query, the municipality and agreement the entry hub
 * signed, cells of this query only; and no hub listed twice (its figures would count twice). */
export function openPartials(contract, answer, digest, answerKey, spec, partnerId) {
  const opened = [];
  const seen = new Set();
  const starts = new Set(bucketStarts(spec));
  for (const p of answer.provenance) {
    if (seen.has(p.hub_id)) throw new SmartregionError(`hub ${p.hub_id} is listed twice in the answer`);
    seen.add(p.hub_id);
    if (p.status !== 'answered') continue;
    let plain;
    try {
      plain = hpkeOpen(Buffer.from(p.sealed_partial ?? []), answerKey, Buffer.concat([SEAL_INFO_PREFIX, digest, Buffer.from(p.hub_id, 'latin1')]));
    } catch {
      throw new SmartregionError(`hub ${p.hub_id}: the sealed partial does not open with this query's key`);
    }
    const signed = contract.SignedPartial.toObject(contract.SignedPartial.decode(unpad(plain, p.hub_id)), { defaults: true });
    const key = Buffer.from(signed.provider_public_key ?? []);
    const bytes = Buffer.from(signed.partial ?? []);
    if (!verifyEd25519(key, Buffer.concat([DOMAIN.partial, bytes]), signed.signature ?? [])) {
      throw new SmartregionError(`hub ${p.hub_id}: the partial result's signature does not verify`);
    }
    const partial = contract.PartialResult.toObject(contract.PartialResult.decode(bytes), { longs: Number, defaults: true });
    if (!isKeyOfHub(partial.provider_hub_id, key, signed.provider_key_history) || partial.provider_hub_id !== p.hub_id) {
      throw new SmartregionError(`hub ${p.hub_id}: the partial result names another provider than its signer`);
    }
    if (!Buffer.from(partial.query_digest).equals(digest)) throw new SmartregionError(`hub ${p.hub_id}: the partial result answers another query`);
    if (partial.municipality !== p.municipality || partial.agreement_id !== p.agreement_id) {
      throw new SmartregionError(`hub ${p.hub_id}: the partial's municipality or agreement is not the one the entry hub signed`);
    }
    checkAgreement(contract, p, partial, partnerId);
    const group = spec.group_by === 'municipality' ? p.municipality : 'region';
    const cells = partial.cells.map((c) => c.bucket_start_ms);
    if (partial.cells.some((c) => c.group !== group || !starts.has(c.bucket_start_ms)) || new Set(cells).size !== cells.length) {
      throw new SmartregionError(`hub ${p.hub_id}: the partial holds a cell outside the query`);
    }
    p.partial = signed;
    opened.push(partial);
  }
  return opened;
}

/** The start of every bucket of an aligned window (UTC). */
export function bucketStarts(spec) {
  if (spec.bucket === 'window') return [spec.start_ms];
  const starts = [];
  const at = new Date(spec.start_ms);
  const step = { hour: () => at.setUTCHours(at.getUTCHours() + 1), day: () => at.setUTCDate(at.getUTCDate() + 1),
    week: () => at.setUTCDate(at.getUTCDate() + 7), month: () => at.setUTCMonth(at.getUTCMonth() + 1),
    year: () => at.setUTCFullYear(at.getUTCFullYear() + 1) }[spec.bucket];
  while (at.getTime() < spec.end_ms) { starts.push(at.getTime()); step(); }
  return starts;
}

/** A bucket's label, as the hubs write it: 2019-03-04T05:00Z, 2019-03-04, 2019-W10, 2019-03, 2019. */
export function bucketLabel(bucket, startMs) {
  const iso = new Date(startMs).toISOString();
  if (bucket === 'hour') return `${iso.slice(0, 13)}:00Z`;
  if (bucket === 'day') return iso.slice(0, 10);
  if (bucket === 'month') return iso.slice(0, 7);
  if (bucket === 'year') return iso.slice(0, 4);
  if (bucket === 'week') { // ISO week: the year and number of the week's Thursday
    const thursday = new Date(startMs + 3 * 86_400_000);
    const year = thursday.getUTCFullYear();
    const week = Math.floor((thursday - Date.UTC(year, 0, 1)) / (7 * 86_400_000)) + 1;
    return `${year}-W${String(week).padStart(2, '0')}`;
  }
  return 'window';
}

const GAMMA = (1 + 0.01) / (1 - 0.01); // the sketch's accuracy alpha = 0.01

/** A sketch ordinal's representative: 0, or +-2 gamma^k / (gamma + 1) with k = |o| - 2048. */
export function ordinalValue(o) {
  return o === 0 ? 0 : Math.sign(o) * ((2 * GAMMA ** (Math.abs(o) - 2048)) / (GAMMA + 1));
}

const LOWEST_EDGE = -1037; // bin edges gamma^x are clipped to where readings can be
const HIGHEST_EDGE = 35487;
const MAX_INTERPOLATED_LEVEL = 8; // a wider bin gives its middle ordinal's value

const MAX_SUBCELL_SKETCHES = 32; // a cell carries at most this many sub-cell sketches

/** docs/querying.md 7.6: the sketches a region-wide quantile is read from: each hub's sub-cell
 * sketches, or its one `coarse` sketch when it sent none. */
export function components(parts) {
  const out = [];
  for (const c of parts) {
    const subcells = c.subcells ?? [];
    if (subcells.length > MAX_SUBCELL_SKETCHES) {
      throw new SmartregionError(`a cell carries ${subcells.length} sub-cell sketches, more than ${MAX_SUBCELL_SKETCHES}`);
    }
    if (subcells.length) out.push(...subcells);
    else if (c.coarse) out.push(c.coarse);
  }
  return out;
}

/** docs/querying.md 7.6: one sketch's coarse bins [level, index, count]. Dyadic bins are nested
 * or disjoint: each bin inside no other takes the counts of the bins inside it. Sorted by first
 * ordinal index * 2^level. The older uniform form (level, bins) is read too. */
export function mergedBins(sketch) {
  const given = [];
  for (const b of sketch.intervals ?? []) given.push([b.level, Number(b.index), Number(b.count)]);
  for (const [index, n] of Object.entries(sketch.bins ?? {})) given.push([sketch.level, Number(index), Number(n)]);
  if (given.some(([level]) => level < 3 || level > 13)) throw new SmartregionError('a partial holds a coarse bin outside levels 3 to 13');
  const merged = new Map();
  for (const [level, index, n] of given.sort((x, y) => y[0] - x[0])) { // the coarsest first
    let key = `${level}|${index}`;
    for (let up = level; up <= 13; up += 1) {
      const candidate = `${up}|${Math.floor(index / 2 ** (up - level))}`;
      if (merged.has(candidate)) { key = candidate; break; }
    }
    merged.set(key, (merged.get(key) ?? 0) + n);
  }
  return [...merged.entries()].map(([key, n]) => [...key.split('|').map(Number), n])
    .sort((x, y) => x[1] * 2 ** x[0] - y[1] * 2 ** y[0]);
}

/** The value at fraction f of the way through bin (level, index): geometric between its edges. */
export function valueInBin(level, index, f) {
  const first = index * 2 ** level;
  const end = (index + 1) * 2 ** level;
  if (level > MAX_INTERPOLATED_LEVEL) return ordinalValue(Math.floor((first + end) / 2));
  const clip = (x) => Math.min(Math.max(x, LOWEST_EDGE), HIGHEST_EDGE);
  if (first > 0) {
    const lo = clip(first - 2049); const hi = clip(end - 2049);
    return GAMMA ** (lo + f * (hi - lo));
  }
  if (end <= 0) {
    const lo = clip(-end - 2048); const hi = clip(-first - 2048);
    return -(GAMMA ** (hi - f * (hi - lo)));
  }
  const top = end - 2049; // the bin holding zero
  return top < LOWEST_EDGE ? 0 : f * GAMMA ** clip(top);
}

/** One sketch's quantile: in the first bin whose cumulative count exceeds r = q * (n - 1), the
 * value at fraction (r - before + 1) / (count + 1) of the way through it. */
export function coarseQuantile(sketch, q) {
  const bins = mergedBins(sketch);
  const total = bins.reduce((a, b) => a + b[2], 0);
  if (total === 0) return NaN;
  const rank = q * (total - 1);
  let before = 0;
  for (const [level, index, n] of bins) {
    if (n && before + n > rank) return valueInBin(level, index, (rank - before + 1) / (n + 1));
    before += n;
  }
  const [level, index, n] = bins[bins.length - 1];
  return valueInBin(level, index, n / (n + 1));
}

const orderView = new DataView(new ArrayBuffer(8));
const SIGN = 1n << 63n;
function doubleOrder(x) { // doubles -> integers (BigInt) in the same order
  orderView.setFloat64(0, x);
  const bits = orderView.getBigInt64(0);
  return bits >= 0n ? bits : -(bits & (SIGN - 1n));
}
function doubleOf(k) {
  orderView.setBigUint64(0, k >= 0n ? k : -k | SIGN);
  return orderView.getFloat64(0);
}

/** The reading at 0-based `rank` when each bin's c readings are placed at fractions j / (c + 1),
 * j = 1..c: the smallest double with more than `rank` placed at or below it. */
function placedAtRank(bins, rank) {
  const atMostIn = (level, index, n, v) => {
    let lo = 0; let hi = n;
    while (lo < hi) {
      const mid = Math.floor((lo + hi + 1) / 2);
      if (valueInBin(level, index, mid / (n + 1)) <= v) lo = mid; else hi = mid - 1;
    }
    return lo;
  };
  const atMost = (v) => bins.reduce((a, [level, index, n]) => a + atMostIn(level, index, n, v), 0);
  let lo = doubleOrder(Math.min(...bins.map(([level, index, n]) => valueInBin(level, index, 1 / (n + 1)))));
  let hi = doubleOrder(Math.max(...bins.map(([level, index, n]) => valueInBin(level, index, n / (n + 1)))));
  while (lo < hi) {
    const mid = (lo + hi) >> 1n; // floor, as Python's //
    if (atMost(doubleOf(mid)) > rank) hi = mid; else lo = mid + 1n;
  }
  return doubleOf(lo);
}

/** Region-wide quantile (docs/querying.md 7.6): one sketch is read as coarseQuantile; of several,
 * the value at rank r = q * (n - 1) of all their bins' placed readings, between the two around a
 * fractional rank geometrically (linearly across zero). */
export function mixtureQuantile(sketches, q) {
  if (sketches.length === 1) return coarseQuantile(sketches[0], q);
  const bins = sketches.flatMap((sketch) => mergedBins(sketch)).filter((b) => b[2]);
  const total = bins.reduce((a, b) => a + b[2], 0);
  if (total === 0) return NaN;
  const rank = q * (total - 1);
  const i = Math.min(Math.floor(rank), total - 1);
  const t = rank - i;
  const a = placedAtRank(bins, i);
  if (t === 0 || i + 1 >= total) return a;
  const b = placedAtRank(bins, i + 1);
  if (a > 0 && b > 0) return a * (b / a) ** t;
  if (a < 0 && b < 0) return -(-a * (b / a) ** t);
  return a + t * (b - a);
}

/** docs/querying.md 7.6: per municipality each cell is one provider's final value, taken as is;
 * region-wide the providers' exact sums add (stddev from sums of squares, sample formula). */
export function mergePartials(partials, spec) {
  const cells = new Map();
  for (const partial of partials) {
    for (const c of partial.cells) {
      const k = `${String(c.bucket_start_ms).padStart(16, '0')}|${c.group}`;
      if (!cells.has(k)) cells.set(k, []);
      cells.get(k).push(c);
    }
  }
  const rows = [];
  for (const k of [...cells.keys()].sort()) {
    const parts = cells.get(k);
    const { group, bucket_start_ms: start } = parts[0];
    const base = { group, bucket_start_ms: start, bucket_label: bucketLabel(spec.bucket, start) };
    if (parts.some((c) => c.suppressed)) {
      rows.push({ ...base, value: 0, readings: 0, contributors: 0, suppressed: true, noisy: false });
      continue;
    }
    let n = 0; let s = 0; let s2 = 0; let contributors = 0;
    for (const c of parts) { n += c.count; s += c.sum; s2 += c.sum_squares; contributors += c.contributors; }
    let value;
    if (spec.group_by === 'municipality') {
      if (parts.length !== 1) throw new SmartregionError(`two hubs answered for municipality ${group}`);
      value = parts[0].value;
    } else if (spec.aggregate === 'quantile') {
      const sketches = components(parts);
      value = sketches.length ? mixtureQuantile(sketches, spec.quantile) : NaN;
    } else {
      value = {
        count: () => n, sum: () => s, mean: () => (n ? s / n : 0),
        min: () => Math.min(...parts.map((c) => c.min)), max: () => Math.max(...parts.map((c) => c.max)),
        stddev: () => (n > 1 ? Math.sqrt(Math.max(0, (s2 - (s * s) / n) / (n - 1))) : 0),
      }[spec.aggregate]();
    }
    rows.push({ ...base, value, readings: n, contributors, suppressed: false, noisy: parts.some((c) => c.noisy) });
  }
  return rows;
}

/** The rows as `smartregion query run -o json` prints them. */
export function readableRows(answer) {
  return answer.rows.map((r) => ({
    group: r.group,
    bucket: r.bucket_label,
    bucket_start_ms: Number(r.bucket_start_ms),
    value: r.suppressed ? null : r.value,
    readings: Number(r.readings),
    contributors: r.contributors,
    suppressed: r.suppressed,
    noisy: r.noisy,
  }));
}

/** The query as `smartregion query verify` reads it (federation/answers.py readable_query). */
export function readableQuery(contract, answer) {
  const { query } = contract.Request.toObject(contract.Request.decode(Buffer.from(answer.query.payload)), { longs: Number, defaults: true });
  return { ...query, answer_key: Buffer.from(query.answer_key).toString('hex') };
}

/** The whole answer as a `smartregion query verify` file (federation/answers.py). */
export function answerFile(contract, answer) {
  const bytes = contract.QueryAnswer.encode(contract.QueryAnswer.fromObject(answer)).finish();
  const request = contract.Request.toObject(contract.Request.decode(Buffer.from(answer.query.payload)), { longs: Number, defaults: true });
  const summary = contract.AnswerSummary.toObject(contract.AnswerSummary.decode(Buffer.from(answer.summary)), { longs: Number, defaults: true });
  const computedAt = (p) => (p.partial?.partial?.length
    ? contract.PartialResult.toObject(contract.PartialResult.decode(Buffer.from(p.partial.partial)), { longs: Number, defaults: true }).computed_at_ms
    : null);
  const doc = {
    format: 'smartregion-query-answer',
    version: 3,
    query: readableQuery(contract, answer),
    asked_by: request.caller_id,
    asked_at_ms: request.issued_at_ms,
    answered_by: answer.answered_by,
    answered_at_ms: summary.merged_at_ms,
    rows: readableRows(answer),
    partial: answer.partial,
    missing_hubs: answer.missing_hubs,
    provenance: answer.provenance.map((p) => ({
      hub_id: p.hub_id, municipality: p.municipality, status: p.status, reason: p.reason, agreement_id: p.agreement_id,
      computed_at_ms: computedAt(p),
    })),
    unsigned: { latency_ms: Object.fromEntries(answer.provenance.map((p) => [p.hub_id, Math.round(p.latency_ms * 10) / 10])) },
    answer: Buffer.from(bytes).toString('base64'),
  };
  return `${JSON.stringify(doc, null, 2)}\n`;
}
