/**
 * Error texts built from what a peer sent (host/errors.ts peerText, and every error's details): bounded, and never
 * an exception of their own, whatever the value (JSON and msgpack can hold objects whose toString is no function,
 * and msgpack 64-bit integers decode to bigints, which JSON.stringify refuses).
 */
import t from 'tap';
import { ErrorCode, HandshakeError, peerText, ShmbusError } from '../host/errors.js';

t.test('peerText: any value a peer can send, as bounded text', async (t) => {
  const hostile = JSON.parse('[{"toString":0,"valueOf":0}]') as unknown;
  t.throws(() => String(hostile), TypeError, 'String() throws on it');
  t.equal(peerText(hostile), '[{"toString":0,"valueOf":0}]');
  t.equal(peerText([1n, 2]), 'object', 'a bigint inside: its type');
  t.equal(peerText(2n ** 70n), '1180591620717411303424');
  t.equal(peerText(undefined), 'undefined');
  t.equal(peerText('x'.repeat(100)), 'x'.repeat(64) + '…', 'cut at 64 characters');
  t.equal(peerText('y'.repeat(10), 4), 'yyyy…');
});

t.test('an error whose details hold such values is made, with their text', async (t) => {
  const error = new HandshakeError('peer announced something', { details: { found: [7n], what: { toString: 0 } } });
  t.equal(error.code, ErrorCode.HANDSHAKE);
  t.equal(error.message, 'peer announced something (found=object what={"toString":0})');
  t.ok(new ShmbusError(ErrorCode.CORRUPT, 'x', { details: { n: 5n } }).message.endsWith('(n=5)'));
});
