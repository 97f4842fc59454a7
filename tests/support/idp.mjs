// A real OpenID provider for the end-to-end identity tests (identity.md §4).
//
// oidc-provider 9.13.3 with a client-credentials client and resource
// indicators, so that access tokens are RFC 9068 JWTs signed with $ALG.
// Keys are generated at every start (kids "<rs|ps|es|ed>-$KID_SUFFIX"), so a
// restart is a key rotation. It listens on 127.0.0.1:$PORT (0 = any free
// port) and prints one JSON line {"port", "issuer"} once it is serving.
// The test copies this file next to node_modules (ESM ignores NODE_PATH).
import http from 'node:http';
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const alg = process.env.ALG || 'RS256';
const suffix = process.env.KID_SUFFIX || '1';
const port = Number(process.env.PORT || 0);

// Resource indicator -> audience of the access tokens issued for it.
const audiences = {
  'urn:agora-token-service': 'agora-token-service',
  'urn:other-service': 'other-service',
};

function signingKey(type, options, kid, keyAlg) {
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), kid, alg: keyAlg, use: 'sig' };
}

const keys = [
  signingKey('rsa', { modulusLength: 2048 }, `rs-${suffix}`, 'RS256'),
  signingKey('rsa', { modulusLength: 2048 }, `ps-${suffix}`, 'PS256'),
  signingKey('ec', { namedCurve: 'P-256' }, `es-${suffix}`, 'ES256'),
  signingKey('ed25519', {}, `ed-${suffix}`, 'EdDSA'),
];

const server = http.createServer();
server.listen(port, '127.0.0.1', () => {
  const actual = server.address().port;
  const issuer = `http://127.0.0.1:${actual}`;
  const provider = new Provider(issuer, {
    jwks: { keys },
    clients: [{
      client_id: 'agora-caller',
      client_secret: 'agora-caller-secret',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: 'rtc:token',
    }],
    scopes: ['rtc:token'],
    enabledJWA: { idTokenSigningAlgValues: ['RS256', 'PS256', 'ES256', 'EdDSA'] },
    features: {
      clientCredentials: { enabled: true },
      devInteractions: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => 'urn:agora-token-service',
        useGrantedResource: () => true,
        getResourceServerInfo: (_ctx, resource) => {
          const audience = audiences[resource];
          if (!audience) throw new Provider.errors.InvalidTarget();
          return {
            scope: 'rtc:token',
            audience,
            accessTokenTTL: 300,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg } },
          };
        },
      },
    },
  });
  server.on('request', provider.callback());
  process.stdout.write(`${JSON.stringify({ port: actual, issuer })}\n`);
});

// The test kills us; exit promptly on the usual signals too.
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
