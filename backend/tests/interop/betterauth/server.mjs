// TEST-ONLY Better Auth server for the pytest interop suite. Not for production.
//
// Env (all optional):
//   PORT               port on 127.0.0.1; 0/unset = let the OS pick (race-free)
//   BETTER_AUTH_URL    baseURL; default http://127.0.0.1:<actual port>
//   BETTER_AUTH_SECRET default: random per start (keys/sessions die with the process anyway)
//   JWT_ALG            EdDSA (default) | ES256 | ES512 | RS256 | PS256
//   JWT_EXPIRATION     jose time span WITH a unit, e.g. "15m" (default), "2s"
//   JWT_ISSUER         default: baseURL
//   JWT_AUDIENCE       default: baseURL
//   ROTATION_INTERVAL  seconds; enables jwks.rotationInterval (rotation is lazy:
//                      a new key is minted by the first signing after expiry)
//   GRACE_PERIOD       seconds an expired key stays in the JWKS (Better Auth default 30 days)
//
// Prints exactly one line "READY <port>" on stdout once it accepts requests.
import { createServer } from "node:http";
import { randomBytes } from "node:crypto";
import { betterAuth } from "better-auth";
import { memoryAdapter } from "better-auth/adapters/memory";
import { jwt } from "better-auth/plugins";
import { toNodeHandler } from "better-auth/node";

const env = process.env;
const optInt = (name) => (env[name] ? Number.parseInt(env[name], 10) : undefined);

function buildAuth(baseURL) {
  const rotationInterval = optInt("ROTATION_INTERVAL");
  const gracePeriod = optInt("GRACE_PERIOD");
  return betterAuth({
    baseURL,
    secret: env.BETTER_AUTH_SECRET || randomBytes(32).toString("hex"),
    // The memory adapter does not create tables: every model used must exist up front.
    // State lives only in this process.
    database: memoryAdapter({ user: [], session: [], account: [], verification: [], jwks: [] }),
    emailAndPassword: { enabled: true, requireEmailVerification: false },
    // Tests sign up many users from 127.0.0.1 in quick succession.
    rateLimit: { enabled: false },
    telemetry: { enabled: false },
    plugins: [
      jwt({
        jwks: {
          keyPairConfig: { alg: env.JWT_ALG || "EdDSA" },
          ...(rotationInterval ? { rotationInterval } : {}),
          ...(gracePeriod !== undefined ? { gracePeriod } : {}),
        },
        jwt: {
          // Must stay a string: a number would be taken as an absolute `exp` claim.
          expirationTime: env.JWT_EXPIRATION || "15m",
          ...(env.JWT_ISSUER ? { issuer: env.JWT_ISSUER } : {}),
          ...(env.JWT_AUDIENCE ? { audience: env.JWT_AUDIENCE } : {}),
        },
      }),
    ],
  });
}

// The handler is installed after listen() so that baseURL can contain the OS-chosen port.
let handler = (_req, res) => {
  res.writeHead(503).end();
};
const server = createServer((req, res) => handler(req, res));
server.listen(Number(env.PORT || 0), "127.0.0.1", () => {
  const { port } = server.address();
  handler = toNodeHandler(buildAuth(env.BETTER_AUTH_URL || `http://127.0.0.1:${port}`));
  process.stdout.write(`READY ${port}\n`);
});

// Exit at once on terminate(): nothing to flush, and server.close() would wait for keep-alive clients.
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => process.exit(0));
