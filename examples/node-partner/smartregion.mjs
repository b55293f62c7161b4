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
//   * the signed answer: the merging hub's Ed25519 over "smartregion/v1/query-answer" || 0x00 ||
//     summary, an AnswerSummary of the rows and of every hub asked with its status.
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
  tlsBinding: domain('tls-binding'),
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
  const value = extensionValue(cert.raw, TLS_BINDING_OID);
  if (!value) throw new SmartregionError("the server's certificate carries no smartregion identity binding");
  if (value.length !== 2 + 32 + 64 || value[0] !== 0x04 || value[1] !== 0x60) throw new SmartregionError('malformed identity binding in the certificate');
  const identityKey = value.subarray(2, 34);
  const spki = cert.publicKey.export({ type: 'spki', format: 'der' });
  if (!verifyEd25519(identityKey, Buffer.concat([DOMAIN.tlsBinding, spki]), value.subarray(34))) {
    throw new SmartregionError("the certificate's identity binding signature is invalid");
  }
  const hubId = hubIdFromPublicKey(identityKey);
  const commonName = cert.subject.split('\n').find((line) => line.startsWith('CN='))?.slice(3);
  if (commonName !== hubId) throw new SmartregionError("the certificate's common name is not the hub id of its identity key");
  return hubId;
}

// -- protobuf and gRPC ---------------------------------------------------------------------------

/** The message types (protobufjs) and the Query service (proto-loader), from proto/ at run time. */
export function loadContract(protoDir = DEFAULT_PROTO_DIR) {
  const file = 'smartregion/v1/query_service.proto';
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => path.join(protoDir, target);
  root.loadSync(file, { keepCase: true });
  const packageDefinition = protoLoader.loadSync(file, {
    includeDirs: [protoDir], keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true,
  });
  const api = grpc.loadPackageDefinition(packageDefinition).smartregion.v1;
  return {
    Request: root.lookupType('smartregion.v1.Request'),
    PartialResult: root.lookupType('smartregion.v1.PartialResult'),
    AnswerSummary: root.lookupType('smartregion.v1.AnswerSummary'),
    QueryAnswer: root.lookupType('smartregion.v1.QueryAnswer'),
    QueryClient: api.Query,
  };
}

/** Connect to the hub at `address` that must be hub `hubId`: fetch its certificate, check the
 * pin, and open a channel that trusts exactly that certificate under the name `hubId`. */
export async function connectPinned(contract, address, hubId) {
  const cert = await fetchCertificate(address);
  const actual = hubIdOfCertificate(cert);
  if (actual !== hubId) throw new SmartregionError(`the server at ${address} is hub ${actual}, not hub ${hubId}`);
  const credentials = grpc.credentials.createSsl(Buffer.from(cert.toString()));
  return new contract.QueryClient(address, credentials, {
    'grpc.ssl_target_name_override': hubId, // the certificate's name is the hub id
    'grpc.default_authority': hubId,
    'grpc.max_receive_message_length': 16 * 1024 * 1024,
  });
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

/** Check an answer before using it: it answers the query you signed, the hub you asked merged
 * it and signed what it says (rows, every hub asked, statuses), and every answered hub signed
 * its partial for this query. Throws on any mismatch; returns the hub ids whose partials verified. */
export function verifyAnswer(contract, answer, sentPayload, entryHubId) {
  const echoed = Buffer.from(answer.query?.payload ?? []);
  if (!echoed.equals(sentPayload)) throw new SmartregionError('the hub answered a different query than the one signed');
  const digest = sha256(echoed);
  verifySummary(contract, answer, digest, entryHubId);
  return verifyPartials(contract, answer, digest);
}

/** The merging hub's signature over an AnswerSummary, and that the summary is this answer. */
export function verifySummary(contract, answer, digest, entryHubId) {
  const key = Buffer.from(answer.answered_by_public_key ?? []);
  if (key.length !== 32 || hubIdFromPublicKey(key) !== answer.answered_by) {
    throw new SmartregionError('the answer names a merging hub whose key it does not carry');
  }
  if (answer.answered_by !== entryHubId) throw new SmartregionError(`the answer was merged by hub ${answer.answered_by}, not by hub ${entryHubId}`);
  const bytes = Buffer.from(answer.summary ?? []);
  if (!verifyEd25519(key, Buffer.concat([DOMAIN.answer, bytes]), answer.summary_signature ?? [])) {
    throw new SmartregionError("the merging hub's signature over the answer does not verify");
  }
  const signed = contract.AnswerSummary.toObject(contract.AnswerSummary.decode(bytes), { longs: Number, defaults: true });
  const rowFields = ['group', 'bucket_start_ms', 'bucket_label', 'value', 'readings', 'contributors', 'suppressed'];
  const sameRow = (r, i) => rowFields.every((f) => r[f] === answer.rows[i][f] || Object.is(r[f], answer.rows[i][f]));
  const sameSource = (p, i) => {
    const q = answer.provenance[i];
    const partialBytes = Buffer.from(q.partial?.partial ?? []);
    const expectedDigest = partialBytes.length ? sha256(partialBytes) : Buffer.alloc(0);
    return p.hub_id === q.hub_id && p.status === q.status && p.reason === q.reason && p.agreement_id === q.agreement_id
      && Buffer.from(p.partial_digest).equals(expectedDigest);
  };
  const matches = Buffer.from(signed.query_digest).equals(digest)
    && signed.answered_by === answer.answered_by
    && signed.partial === answer.partial
    && signed.merged_at_ms > 0
    && signed.missing_hubs.length === answer.missing_hubs.length && signed.missing_hubs.every((h, i) => h === answer.missing_hubs[i])
    && signed.rows.length === answer.rows.length && signed.rows.every(sameRow)
    && signed.provenance.length === answer.provenance.length && signed.provenance.every(sameSource);
  if (!matches) throw new SmartregionError('the answer differs from what the merging hub signed (rows, hubs asked, statuses or partial flag)');
}

/** Every answered hub's signed partial: signature, hub id derived from the signing key, and
 * that it answers this exact query; and no hub listed twice (its figures would count twice). */
export function verifyPartials(contract, answer, digest) {
  const verified = [];
  const seen = new Set();
  for (const p of answer.provenance) {
    if (seen.has(p.hub_id)) throw new SmartregionError(`hub ${p.hub_id} is listed twice in the answer`);
    seen.add(p.hub_id);
    if (p.status !== 'answered') continue;
    const signed = p.partial ?? {};
    const key = Buffer.from(signed.provider_public_key ?? []);
    const bytes = Buffer.from(signed.partial ?? []);
    if (!verifyEd25519(key, Buffer.concat([DOMAIN.partial, bytes]), signed.signature ?? [])) {
      throw new SmartregionError(`hub ${p.hub_id}: the partial result's signature does not verify`);
    }
    const partial = contract.PartialResult.decode(bytes);
    if (partial.provider_hub_id !== hubIdFromPublicKey(key) || partial.provider_hub_id !== p.hub_id) {
      throw new SmartregionError(`hub ${p.hub_id}: the partial result names another provider than its signer`);
    }
    if (!Buffer.from(partial.query_digest).equals(digest)) throw new SmartregionError(`hub ${p.hub_id}: the partial result answers another query`);
    verified.push(p.hub_id);
  }
  return verified;
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
  }));
}

/** The whole answer as a `smartregion query verify` file (federation/answers.py). */
export function answerFile(contract, answer, spec) {
  const bytes = contract.QueryAnswer.encode(contract.QueryAnswer.fromObject(answer)).finish();
  const doc = {
    format: 'smartregion-query-answer',
    version: 1,
    query: spec,
    rows: readableRows(answer),
    partial: answer.partial,
    missing_hubs: answer.missing_hubs,
    provenance: answer.provenance.map((p) => ({
      hub_id: p.hub_id, municipality: p.municipality, status: p.status, reason: p.reason,
      agreement_id: p.agreement_id, latency_ms: Math.round(p.latency_ms * 10) / 10,
    })),
    answer: Buffer.from(bytes).toString('base64'),
  };
  return `${JSON.stringify(doc, null, 2)}\n`;
}
