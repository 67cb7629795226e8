// A real OpenID Provider for carewatch's single sign-on tests: `oidc-provider` (npm,
// OpenID-certified) with test people (roles, care teams), a confidential dashboard client
// (authorization code + PKCE, RP-initiated logout) and service accounts (client credentials).
// Access tokens for the resource `urn:carewatch` are JWTs with `aud: carewatch`.
//
// Usage: node provider.mjs <port> <carewatch base url>
// Prints `oidc-provider listening on <issuer>` once it serves. Test-only control endpoints
// (never part of a real provider), JSON in and out:
//   POST /test/users/<id>  {"name", "roles": [...], "care_team": [...]}  add or change a person
//   POST /test/token       {"user": id, "resource"?: "urn:carewatch"}   a person's access token,
//                          through the real authorization code flow (login form, consent, code
//                          exchange with PKCE)
//   POST /test/forge       {"user": id, "kind": "expired"|"wrong_key"|"none"|"hs256"}  a bad
//                          token for the refusal tests (the issuer's own key for "expired")
//   POST /test/rotate      a new signing key (the old one stays published)
//   POST /test/launch      {"patient"}  an EHR launch id with that patient in context
//   GET  /test/seen        the paths requested so far (to show a request was never made)
//
// It also plays the EHR of the SMART App Launch tests (no real EHR can run here): its FHIR base
// is `<issuer>/fhir`, whose `/.well-known/smart-configuration` names this provider's
// endpoints; the authorization endpoint takes SMART's `launch` (a known launch id; required
// with the `launch` scope) and `aud` (must be the FHIR base), and the token response carries
// the `patient` in context: the launch's, or for a standalone launch (`launch/patient`) the
// person's `patient` (POST /test/users/<id> {"patient"}), as if picked in the EHR's chooser.
import { createRequire } from 'node:module';
import http from 'node:http';
import crypto from 'node:crypto';
import path from 'node:path';

const [port, carewatch] = process.argv.slice(2);
const nodeDir = process.env.CAREWATCH_NODE_DIR || path.join(process.env.HOME, '.cache/carewatch-node');
const require = createRequire(path.join(nodeDir, 'package.json'));
const { default: Provider, errors } = await import(require.resolve('oidc-provider'));
const jose = await import(require.resolve('jose'));

const issuer = `http://127.0.0.1:${port}`;
const fhirBase = `${issuer}/fhir`;
const launches = new Map(); // launch id -> { patient }
const contextOfState = new Map(); // state -> { patient } | { standalone: true }
const contextOfCode = new Map(); // authorization code -> the same
const seen = [];
const users = {
  alice: { name: 'Alice Nurse', roles: ['care_manager'], care_team: ['north', 'east'] },
  bob: { name: 'Bob Analyst', roles: ['analyst'], care_team: [] },
  carol: { name: 'Carol Admin', roles: ['admin'], care_team: [] },
  dave: { name: 'Dave Nobody', roles: [], care_team: [] },
};
const services = { 'svc-analyst': ['analyst'], 'svc-admin': ['admin'] };
const DASHBOARD = { id: 'carewatch-dashboard', secret: 'dashboard-secret-for-tests' };

async function newKey() {
  const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
  const jwk = await jose.exportJWK(privateKey);
  return { ...jwk, kid: crypto.randomUUID(), alg: 'RS256', use: 'sig' };
}
let keys = [await newKey()];

function configuration() {
  return {
    clients: [
      {
        client_id: DASHBOARD.id,
        client_secret: DASHBOARD.secret,
        grant_types: ['authorization_code'],
        response_types: ['code'],
        redirect_uris: [`${carewatch}/auth/callback`, `${carewatch}/smart/callback`],
        post_logout_redirect_uris: [`${carewatch}/`],
        token_endpoint_auth_method: 'client_secret_basic',
      },
      ...Object.keys(services).map((id) => ({
        client_id: id,
        client_secret: `${id}-secret`,
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
      })),
    ],
    jwks: { keys },
    findAccount: async (_ctx, id) => users[id] && {
      accountId: id,
      claims: async () => ({ sub: id, name: users[id].name, roles: users[id].roles, care_team: users[id].care_team, fhirUser: `${fhirBase}/Practitioner/${id}` }),
    },
    claims: { openid: ['sub'], profile: ['name', 'roles', 'care_team'], fhirUser: ['fhirUser'] },
    scopes: ['openid', 'offline_access', 'launch', 'launch/patient', 'patient/*.read'],
    extraParams: {
      async launch(ctx, value) {
        const scopes = (ctx.oidc.params.scope || '').split(' ');
        if (scopes.includes('launch') && !value) throw new errors.InvalidRequest('launch is required with the launch scope');
        if (value !== undefined && !launches.has(value)) throw new errors.InvalidRequest('unknown launch');
      },
      async aud(ctx, value) {
        const smart = (ctx.oidc.params.scope || '').split(' ').some((s) => s === 'launch' || s === 'launch/patient');
        if ((smart || value !== undefined) && value !== fhirBase) throw new errors.InvalidRequest('aud is not this EHR\'s FHIR server');
      },
    },
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    ttl: { AccessToken: 300, AuthorizationCode: 60, IdToken: 300, Interaction: 600, Session: 3600, Grant: 3600, ClientCredentials: 300 },
    cookies: { keys: ['carewatch-test-cookie-key'] },
    features: {
      devInteractions: { enabled: true },
      clientCredentials: { enabled: true },
      rpInitiatedLogout: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (_ctx, _client, oneOf) => oneOf || 'urn:carewatch',
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, resource) => {
          const audience = { 'urn:carewatch': 'carewatch', 'urn:other': 'other-api' }[resource];
          if (!audience) throw new errors.InvalidTarget();
          return { audience, scope: 'sql', accessTokenFormat: 'jwt', accessTokenTTL: 300, jwt: { sign: { alg: 'RS256' } } };
        },
      },
    },
    extraTokenClaims: async (_ctx, token) => {
      if (token.accountId && users[token.accountId]) {
        const u = users[token.accountId];
        return { name: u.name, roles: u.roles, care_team: u.care_team };
      }
      if (token.kind === 'ClientCredentials') return { roles: services[token.clientId] || [] };
      return undefined;
    },
  };
}

let provider;
function start() {
  provider = new Provider(issuer, configuration());
  provider.proxy = false;
  provider.use(smartContext);
}

// The EHR's launch context: remembered by `state` at the authorization request, by code when
// the code goes back to the app, and put in the token response as `patient`.
async function smartContext(ctx, next) {
  if (ctx.path === '/auth' && ctx.method === 'GET' && ctx.query.state) {
    const scopes = String(ctx.query.scope || '').split(' ');
    if (ctx.query.launch && launches.has(ctx.query.launch)) {
      contextOfState.set(ctx.query.state, { patient: launches.get(ctx.query.launch).patient });
    } else if (scopes.includes('launch/patient')) {
      contextOfState.set(ctx.query.state, { standalone: true });
    }
  }
  await next();
  const loc = ctx.response.get('location');
  if (loc && loc.startsWith(`${carewatch}/smart/callback`)) {
    const q = new URL(loc).searchParams;
    const c = contextOfState.get(q.get('state'));
    if (c && q.get('code')) contextOfCode.set(q.get('code'), c);
  }
  if (ctx.path === '/token' && ctx.status === 200 && ctx.body && ctx.body.access_token) {
    const code = ctx.oidc && ctx.oidc.params && ctx.oidc.params.code;
    const c = code && contextOfCode.get(code);
    if (c) {
      contextOfCode.delete(code);
      const account = ctx.oidc.entities.AuthorizationCode && ctx.oidc.entities.AuthorizationCode.accountId;
      const patient = c.standalone ? users[account] && users[account].patient : c.patient;
      if (patient) ctx.body = { ...ctx.body, patient };
    }
  }
}
start();

// ---- the real authorization code flow, headless (for tokens the tests use on other wires) ----
function cookieJar() {
  const jar = new Map();
  return {
    header: () => [...jar].map(([k, v]) => `${k}=${v}`).join('; '),
    take: (res) => {
      for (const c of res.headers.getSetCookie()) {
        const [kv] = c.split(';');
        const i = kv.indexOf('=');
        jar.set(kv.slice(0, i), kv.slice(i + 1));
      }
    },
  };
}

async function userToken(user, resource = 'urn:carewatch') {
  const jar = cookieJar();
  const go = async (url, init = {}) => {
    const res = await fetch(new URL(url, issuer), { ...init, redirect: 'manual', headers: { ...(init.headers || {}), cookie: jar.header() } });
    jar.take(res);
    return res;
  };
  const verifier = crypto.randomBytes(32).toString('base64url');
  const challenge = crypto.createHash('sha256').update(verifier).digest('base64url');
  const redirect = `${carewatch}/auth/callback`;
  const q = new URLSearchParams({
    client_id: DASHBOARD.id, response_type: 'code', redirect_uri: redirect, scope: 'openid profile sql',
    state: 'x', nonce: 'n', code_challenge: challenge, code_challenge_method: 'S256', resource,
  });
  let res = await go(`/auth?${q}`);
  for (let i = 0; i < 10; i++) {
    const loc = res.headers.get('location');
    if (!loc) throw new Error(`authorization flow stopped with ${res.status}: ${await res.text()}`);
    if (loc.startsWith(redirect)) {
      const code = new URL(loc).searchParams.get('code');
      const body = new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: redirect, code_verifier: verifier, resource });
      const basic = Buffer.from(`${DASHBOARD.id}:${DASHBOARD.secret}`).toString('base64');
      const t = await fetch(`${issuer}/token`, { method: 'POST', body, headers: { authorization: `Basic ${basic}` } });
      const json = await t.json();
      if (!json.access_token) throw new Error(`token endpoint: ${JSON.stringify(json)}`);
      return json.access_token;
    }
    if (loc.includes('/interaction/')) {
      const page = await go(loc);
      const html = await page.text();
      const form = html.includes('name="login"')
        ? new URLSearchParams({ prompt: 'login', login: user, password: 'any' })
        : new URLSearchParams({ prompt: 'consent' });
      res = await go(loc, { method: 'POST', body: form });
    } else {
      res = await go(loc);
    }
  }
  throw new Error('too many redirects');
}

// ---- bad tokens ----
async function forge(user, kind) {
  const now = Math.floor(Date.now() / 1000);
  const u = users[user];
  const claims = { iss: issuer, aud: 'carewatch', sub: user, name: u.name, roles: u.roles, care_team: u.care_team, iat: now };
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const current = keys[0];
  if (kind === 'expired') {
    const key = await jose.importJWK(current, 'RS256');
    return new jose.SignJWT({ ...claims, iat: now - 7200, exp: now - 3600 })
      .setProtectedHeader({ alg: 'RS256', kid: current.kid, typ: 'at+jwt' }).sign(key);
  }
  if (kind === 'wrong_key') {
    const other = await newKey();
    const key = await jose.importJWK(other, 'RS256');
    return new jose.SignJWT({ ...claims, exp: now + 300 })
      .setProtectedHeader({ alg: 'RS256', kid: current.kid, typ: 'at+jwt' }).sign(key);
  }
  if (kind === 'none') {
    return `${b64({ alg: 'none', typ: 'JWT' })}.${b64({ ...claims, exp: now + 300 })}.`;
  }
  if (kind === 'hs256') {
    // Alg confusion: HMAC keyed with the issuer's *public* key, as a naive verifier would.
    const pub = crypto.createPublicKey({ key: { kty: current.kty, n: current.n, e: current.e }, format: 'jwk' });
    const secret = pub.export({ type: 'spki', format: 'pem' });
    const input = `${b64({ alg: 'HS256', typ: 'JWT', kid: current.kid })}.${b64({ ...claims, exp: now + 300 })}`;
    const sig = crypto.createHmac('sha256', secret).update(input).digest('base64url');
    return `${input}.${sig}`;
  }
  throw new Error(`unknown kind ${kind}`);
}

// ---- server ----
async function body(req) {
  let s = '';
  for await (const c of req) s += c;
  return s ? JSON.parse(s) : {};
}
const send = (res, status, obj) => { res.writeHead(status, { 'content-type': 'application/json' }); res.end(JSON.stringify(obj)); };

const server = http.createServer(async (req, res) => {
  seen.push(req.url.split('?')[0]);
  if (req.url === '/fhir/.well-known/smart-configuration') {
    return send(res, 200, {
      issuer, authorization_endpoint: `${issuer}/auth`, token_endpoint: `${issuer}/token`, jwks_uri: `${issuer}/jwks`,
      response_types_supported: ['code'], code_challenge_methods_supported: ['S256'],
      scopes_supported: ['openid', 'profile', 'fhirUser', 'launch', 'launch/patient', 'patient/*.read'],
      capabilities: ['launch-ehr', 'launch-standalone', 'context-ehr-patient', 'context-standalone-patient', 'sso-openid-connect', 'client-confidential-symmetric'],
    });
  }
  if (!req.url.startsWith('/test/')) return provider.callback()(req, res);
  try {
    const b = req.method === 'POST' ? await body(req) : {};
    if (req.url.startsWith('/test/users/')) {
      const id = decodeURIComponent(req.url.slice('/test/users/'.length));
      users[id] = { ...(users[id] || { name: id, roles: [], care_team: [] }), ...b };
      return send(res, 200, users[id]);
    }
    if (req.url === '/test/token') return send(res, 200, { token: await userToken(b.user, b.resource) });
    if (req.url === '/test/forge') return send(res, 200, { token: await forge(b.user, b.kind) });
    if (req.url === '/test/launch') {
      const id = crypto.randomBytes(16).toString('base64url');
      launches.set(id, { patient: b.patient });
      return send(res, 200, { launch: id });
    }
    if (req.url === '/test/seen') return send(res, 200, { paths: seen });
    if (req.url === '/test/rotate') {
      keys = [await newKey(), ...keys];
      start();
      return send(res, 200, { kid: keys[0].kid });
    }
    return send(res, 404, { error: 'not found' });
  } catch (e) {
    return send(res, 500, { error: String(e && e.message) });
  }
});
server.listen(Number(port), '127.0.0.1', () => console.log(`oidc-provider listening on ${issuer}`));
