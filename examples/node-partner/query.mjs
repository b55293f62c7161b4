#!/usr/bin/env node
// Ask a smartregion hub one federated query as a partner, and print the answer as JSON.
//
//   SMARTREGION_PASSPHRASE=... node query.mjs --key uis.key --hub hub.example:7443 --hub-id 3f2a... \
//     --dataset air_quality --metric pm25 --aggregate mean --from 2019-01-01 --to 2020-01-01 \
//     --bucket month --group-by municipality --purpose research
//
// Prints {"rows": [...], "partial", "missing_hubs", "provenance": [...], "answered_by"}, after
// checking the merging hub's signature over the answer and every answered hub's signed partial. --save FILE also writes the answer
// in the format `smartregion query verify FILE` checks offline. Exit 1 on a refusal (gRPC
// status and smartregion-reason on stderr), 2 on bad arguments. docs/querying.md explains it all.

import fs from 'node:fs';
import { parseArgs } from 'node:util';

import { status as GrpcStatus } from '@grpc/grpc-js';

import {
  DEFAULT_PROTO_DIR, SmartregionError, answerFile, connectPinned, loadContract, loadPartnerKey, newAnswerKey, openAnswer,
  readableRows, runQuery, signQuery,
} from './smartregion.mjs';

const USAGE = `usage: node query.mjs --key FILE --hub HOST:PORT --hub-id ID --dataset D --metric M --aggregate A
                      --from YYYY-MM-DD --to YYYY-MM-DD --purpose CODE [--bucket window] [--group-by region]
                      [--quantile Q] [--municipality NNNN ...] [--ask-hub ID ...] [--deadline-ms MS]
                      [--save FILE] [--proto-dir DIR]`;

function usage(message) {
  process.stderr.write(`error: ${message}\n${USAGE}\n`);
  process.exit(2);
}

function dateMs(text, option) {
  if (!/^\d{4}-\d{2}-\d{2}$/.test(text ?? '')) usage(`${option} must be a date like 2019-01-01`);
  const ms = Date.parse(`${text}T00:00:00Z`); // midnight UTC, as the smartregion CLI reads it
  if (Number.isNaN(ms) || new Date(ms).toISOString().slice(0, 10) !== text) usage(`${option} must be a date like 2019-01-01`);
  return ms;
}

let options;
try {
  ({ values: options } = parseArgs({
    options: {
      key: { type: 'string' }, hub: { type: 'string' }, 'hub-id': { type: 'string' },
      dataset: { type: 'string' }, metric: { type: 'string' }, aggregate: { type: 'string' },
      quantile: { type: 'string', default: '0' }, from: { type: 'string' }, to: { type: 'string' },
      bucket: { type: 'string', default: 'window' }, 'group-by': { type: 'string', default: 'region' },
      municipality: { type: 'string', multiple: true, default: [] }, 'ask-hub': { type: 'string', multiple: true, default: [] },
      purpose: { type: 'string' }, 'deadline-ms': { type: 'string', default: '0' },
      save: { type: 'string' }, help: { type: 'boolean', short: 'h' }, 'proto-dir': { type: 'string', default: process.env.SMARTREGION_PROTO_DIR || DEFAULT_PROTO_DIR },
    },
  }));
} catch (err) {
  usage(err.message);
}
if (options.help) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}
for (const required of ['key', 'hub', 'hub-id', 'dataset', 'metric', 'aggregate', 'from', 'to', 'purpose']) {
  if (!options[required]) usage(`--${required} is required`);
}
const deadlineMs = Number(options['deadline-ms']);
if (!Number.isInteger(deadlineMs) || deadlineMs < 0 || deadlineMs > 60_000) usage('--deadline-ms is a whole number of ms, 0..60000');

const hubId = options['hub-id'].trim().toLowerCase();
const spec = {
  dataset: options.dataset,
  metric: options.metric,
  aggregate: options.aggregate,
  quantile: Number(options.quantile),
  start_ms: dateMs(options.from, '--from'),
  end_ms: dateMs(options.to, '--to'),
  bucket: options.bucket,
  group_by: options['group-by'],
  municipalities: options.municipality,
  hub_ids: options['ask-hub'],
  purpose_code: options.purpose,
  deadline_ms: deadlineMs,
};
const answerKey = newAnswerKey(); // for this one query: only this process can open the partials
spec.answer_key = answerKey.raw;

let client;
try {
  const contract = loadContract(options['proto-dir']);
  const key = loadPartnerKey(options.key);
  client = await connectPinned(contract, options.hub, hubId);
  const signed = signQuery(contract, key, hubId, spec);
  const answer = await runQuery(client, signed, deadlineMs);
  const verified = openAnswer(contract, answer, signed.payload, hubId, answerKey, spec, key.publicKey);
  if (options.save) fs.writeFileSync(options.save, answerFile(contract, answer));
  const out = {
    rows: readableRows(answer),
    partial: answer.partial,
    missing_hubs: answer.missing_hubs,
    provenance: answer.provenance.map((p) => ({
      hub_id: p.hub_id, municipality: p.municipality, status: p.status, reason: p.reason, agreement_id: p.agreement_id,
      signature_verified: verified.includes(p.hub_id),
    })),
    answered_by: answer.answered_by,
  };
  process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
  if (answer.partial) process.stderr.write(`warning: partial answer, missing ${answer.missing_hubs.join(', ')}\n`);
} catch (err) {
  if (err instanceof SmartregionError) {
    process.stderr.write(`error: ${err.message}\n`);
  } else if (err && typeof err.code === 'number' && err.metadata) { // a gRPC status
    const reason = err.metadata.get('smartregion-reason')[0];
    const codeName = Object.keys(GrpcStatus).find((name) => GrpcStatus[name] === err.code) ?? err.code;
    process.stderr.write(`error: the hub answered ${codeName}${reason ? ` (${reason})` : ''}: ${err.details}\n`);
  } else {
    process.stderr.write(`error: ${err?.stack ?? err}\n`);
  }
  process.exitCode = 1;
} finally {
  client?.close();
}
