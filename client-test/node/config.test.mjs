// SPEC §1/§2 settings a deployment changes: RS256/ES256 public keys, accepted algorithms, the user
// claim, joinable room patterns, namespaces; all through HERALD__* environment overrides.
import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import jwt from 'jsonwebtoken';
import {
  serversForThisFile, startHerald, connect, connectRefused, mintToken, userToken, uniqueUser, TIMEOUT,
} from './herald.mjs';

const dir = mkdtempSync(path.join(os.tmpdir(), 'herald-client-test-'));
const server = serversForThisFile();
after(() => rmSync(dir, { recursive: true, force: true }));

const exp = () => Math.floor(Date.now() / 1000) + 3600;
const ws = { transports: ['websocket'] };

describe('public-key tokens', () => {
  test('RS256 with auth.public_key_pem; HS256 and key-confusion tokens refused', async () => {
    const { publicKey, privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    const pubPem = publicKey.export({ type: 'spki', format: 'pem' });
    const pemPath = path.join(dir, 'rsa.pub.pem');
    writeFileSync(pemPath, pubPem);
    const s = await server({ HERALD__AUTH__PUBLIC_KEY_PEM: pemPath, HERALD__AUTH__ALGORITHMS: 'RS256' });
    const user = uniqueUser();
    const good = jwt.sign({ user_id: user, exp: exp() }, privateKey, { algorithm: 'RS256', noTimestamp: true });
    const { welcome } = await connect(s.url, { ...ws, auth: { token: good } });
    assert.equal(welcome.data.user_id, String(user));
    // HS256 is not in auth.algorithms here, even with the right secret
    assert.equal((await connectRefused(s.url, { ...ws, auth: { token: userToken(user) } })).message, 'invalid token');
    // the classic confusion attack: HS256 signed with the public key's PEM as the HMAC secret
    const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const head = b64({ alg: 'HS256', typ: 'JWT' });
    const body = b64({ user_id: user, exp: exp() });
    const forged = `${head}.${body}.${crypto.createHmac('sha256', pubPem).update(`${head}.${body}`).digest('base64url')}`;
    assert.equal((await connectRefused(s.url, { ...ws, auth: { token: forged } })).message, 'invalid token');
    // another RSA key
    const other = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
    const wrong = jwt.sign({ user_id: user, exp: exp() }, other, { algorithm: 'RS256', noTimestamp: true });
    assert.equal((await connectRefused(s.url, { ...ws, auth: { token: wrong } })).message, 'invalid token');
    const expired = jwt.sign({ user_id: user, exp: exp() - 7200 }, privateKey, { algorithm: 'RS256', noTimestamp: true });
    assert.equal((await connectRefused(s.url, { ...ws, auth: { token: expired } })).message, 'token expired');
  });

  test('ES256 alongside HS256', async () => {
    const { publicKey, privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const pemPath = path.join(dir, 'ec.pub.pem');
    writeFileSync(pemPath, publicKey.export({ type: 'spki', format: 'pem' }));
    const s = await server({ HERALD__AUTH__PUBLIC_KEY_PEM: pemPath, HERALD__AUTH__ALGORITHMS: 'HS256,ES256' });
    const user = uniqueUser();
    const es = jwt.sign({ user_id: user, exp: exp() }, privateKey, { algorithm: 'ES256', noTimestamp: true });
    assert.equal((await connect(s.url, { ...ws, auth: { token: es } })).welcome.data.user_id, String(user));
    assert.equal((await connect(s.url, { ...ws, auth: { token: userToken(user) } })).welcome.data.user_id, String(user));
    const es384 = jwt.sign({ user_id: user, exp: exp() },
      crypto.generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey, { algorithm: 'ES384', noTimestamp: true });
    assert.equal((await connectRefused(s.url, { ...ws, auth: { token: es384 } })).message, 'invalid token');
  });
});

describe('claims and rooms settings', () => {
  test('auth.user_claim picks the claim; sub stays the fallback', async () => {
    const s = await server({ HERALD__AUTH__USER_CLAIM: 'uid' });
    const user = uniqueUser();
    const a = await connect(s.url, { ...ws, auth: { token: mintToken({ uid: user, user_id: 'ignored' }) } });
    assert.equal(a.welcome.data.user_id, String(user));
    const b = await connect(s.url, { ...ws, auth: { token: mintToken({ sub: 'via-sub' }) } });
    assert.equal(b.welcome.data.user_id, 'via-sub');
  });

  test('rooms.joinable and rooms.max_name_bytes from the environment', async () => {
    const s = await server({ HERALD__ROOMS__JOINABLE: 'board-*,lobby', HERALD__ROOMS__MAX_NAME_BYTES: '12' });
    const { socket } = await connect(s.url, { ...ws, auth: { token: userToken(uniqueUser()) } });
    const ack = (room) => socket.timeout(TIMEOUT).emitWithAck('room:join', room);
    assert.deepEqual(await ack('lobby'), { ok: true, room: 'lobby' });
    assert.deepEqual(await ack('board-7'), { ok: true, room: 'board-7' });
    assert.deepEqual(await ack('queue'), { ok: false, error: 'room not joinable' });
    assert.deepEqual(await ack('board-1234567'), { ok: false, error: 'room name longer than 12 bytes' });
  });

  test('a namespace that is not configured is refused', async () => {
    const s = await server({});
    const err = await connectRefused(`${s.url}/admin`, { ...ws, auth: { token: userToken(uniqueUser()) } });
    assert.equal(err.message, 'Invalid namespace');
  });
});

describe('startup refusals', () => {
  test('auth.required with no key refuses to start, naming the setting', async () => {
    await assert.rejects(
      startHerald({ env: { HERALD__AUTH__JWT_SECRET: '' } }),
      (e) => /exited/.test(e.message) && /jwt_secret/.test(e.message),
    );
  });

  test('an unknown algorithm in auth.algorithms refuses to start', async () => {
    await assert.rejects(
      startHerald({ env: { HERALD__AUTH__ALGORITHMS: 'HS256,none' } }),
      (e) => /exited/.test(e.message) && /algorithm/.test(e.message),
    );
  });
});
