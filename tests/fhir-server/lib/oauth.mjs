// Minimal OAuth2 client_credentials token endpoint and bearer-token checker,
// for testing the agent's OAuth path only (RFC 6749 §4.4, errors per §5.2,
// bearer errors per RFC 6750 §3). Not a security component: tokens are random
// opaque strings kept in memory, secrets are compared in constant time only out
// of habit.
//
// Invariants: the clock is a parameter (`now` in ms) of every time-dependent
// method; a token is valid while now < expiresAt; changing the client secret
// does not revoke tokens already issued (expire()/revoke() do).

import { randomBytes, timingSafeEqual } from 'node:crypto';

function safeEqual(a, b) {
  const x = Buffer.from(String(a));
  const y = Buffer.from(String(b));
  return x.length === y.length && timingSafeEqual(x, y);
}

export class OAuth {
  /** @param {{clientId: string, clientSecret: string, tokenLifetime: number, requireAuth: boolean}} config */
  constructor(config) {
    this.config = { ...config };
    this.tokens = new Map(); // token -> { clientId, scope, expiresAt }
    this.stats = { issued: 0, invalidClient: 0, badRequest: 0, accepted: 0, missing: 0, invalid: 0, expired: 0 };
  }

  configure(patch) {
    const c = { ...this.config };
    if (patch.clientId !== undefined) c.clientId = String(patch.clientId);
    if (patch.clientSecret !== undefined) c.clientSecret = String(patch.clientSecret);
    if (patch.tokenLifetime !== undefined) {
      if (!Number.isFinite(patch.tokenLifetime) || patch.tokenLifetime < 0) throw new Error('tokenLifetime must be a number of seconds >= 0');
      c.tokenLifetime = patch.tokenLifetime;
    }
    if (patch.requireAuth !== undefined) c.requireAuth = !!patch.requireAuth;
    this.config = c;
    return this.publicConfig();
  }

  publicConfig() {
    return { clientId: this.config.clientId, tokenLifetime: this.config.tokenLifetime, requireAuth: this.config.requireAuth };
  }

  /** Marks every issued token as expired at `now`. */
  expire(now) {
    for (const t of this.tokens.values()) t.expiresAt = Math.min(t.expiresAt, now);
  }

  revoke() {
    this.tokens.clear();
  }

  /**
   * Handles a token request. `form` is the parsed x-www-form-urlencoded body,
   * `authorization` the raw Authorization header. Returns { status, headers, body }.
   */
  token(form, authorization, now) {
    const json = (status, body, extra = {}) => ({
      status,
      headers: { 'Cache-Control': 'no-store', Pragma: 'no-cache', ...extra },
      body,
    });
    let clientId = form.get('client_id') ?? undefined;
    let clientSecret = form.get('client_secret') ?? undefined;
    let basic = false;
    if (typeof authorization === 'string' && /^basic /i.test(authorization)) {
      basic = true;
      const decoded = Buffer.from(authorization.slice(6).trim(), 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      if (colon < 0) {
        this.stats.invalidClient++;
        return json(401, { error: 'invalid_client', error_description: 'malformed Basic credentials' }, { 'WWW-Authenticate': 'Basic realm="token"' });
      }
      // RFC 6749 §2.3.1: client id and secret are form-urlencoded before Basic encoding.
      const dec = (s) => {
        try {
          return decodeURIComponent(s.replace(/\+/g, ' '));
        } catch {
          return s;
        }
      };
      clientId = dec(decoded.slice(0, colon));
      clientSecret = dec(decoded.slice(colon + 1));
    }
    const grant = form.get('grant_type');
    if (!grant) {
      this.stats.badRequest++;
      return json(400, { error: 'invalid_request', error_description: 'grant_type is required' });
    }
    if (grant !== 'client_credentials') {
      this.stats.badRequest++;
      return json(400, { error: 'unsupported_grant_type', error_description: `grant_type ${grant} is not supported` });
    }
    if (clientId === undefined || clientSecret === undefined) {
      this.stats.invalidClient++;
      return json(401, { error: 'invalid_client', error_description: 'client authentication missing' }, basic ? { 'WWW-Authenticate': 'Basic realm="token"' } : {});
    }
    if (!safeEqual(clientId, this.config.clientId) || !safeEqual(clientSecret, this.config.clientSecret)) {
      this.stats.invalidClient++;
      return json(401, { error: 'invalid_client', error_description: 'unknown client or wrong secret' }, basic ? { 'WWW-Authenticate': 'Basic realm="token"' } : {});
    }
    const token = randomBytes(24).toString('base64url');
    const scope = form.get('scope') ?? 'system/*.*';
    const lifetime = this.config.tokenLifetime;
    this.tokens.set(token, { clientId, scope, expiresAt: now + lifetime * 1000 });
    this.stats.issued++;
    return json(200, { access_token: token, token_type: 'Bearer', expires_in: lifetime, scope });
  }

  /**
   * Checks a request's Authorization header when auth is required.
   * Returns undefined when allowed, else { status: 401, wwwAuthenticate, message }.
   */
  check(authorization, now) {
    if (!this.config.requireAuth) return undefined;
    const m = typeof authorization === 'string' ? /^Bearer\s+(\S+)\s*$/i.exec(authorization) : null;
    if (!m) {
      this.stats.missing++;
      return { status: 401, wwwAuthenticate: 'Bearer realm="fhir"', message: 'Authorization: Bearer <token> required' };
    }
    const t = this.tokens.get(m[1]);
    if (!t) {
      this.stats.invalid++;
      return {
        status: 401,
        wwwAuthenticate: 'Bearer realm="fhir", error="invalid_token", error_description="unknown token"',
        message: 'unknown access token',
      };
    }
    if (now >= t.expiresAt) {
      this.stats.expired++;
      return {
        status: 401,
        wwwAuthenticate: 'Bearer realm="fhir", error="invalid_token", error_description="The access token expired"',
        message: 'access token expired',
      };
    }
    this.stats.accepted++;
    return undefined;
  }
}
