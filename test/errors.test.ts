/**
 * Error texts built from what a peer sent (host/errors.ts peerText, and every error's details): bounded, and never
 * an exception of their own, whatever the value (JSON and msgpack can hold objects whose toString is no function,
 * and msgpack 64-bit integers decode to bigints, which JSON.stringify refuses).
 */
import t from 'tap';
import { ErrorCode, HandshakeError, isConnectionEnd, peerError, peerText, ShmbusError } from '../host/errors.js';
import { errorReply, remoteError } from '../host/rpc.js';

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

t.test('peerError: a peer names one of our codes or gets the fallback; its message is bounded', async (t) => {
  t.equal(peerError({ code: ErrorCode.LIMIT, message: 'full' }, ErrorCode.HANDSHAKE, 'listener refused: ', 'no reason').message, 'listener refused: full');
  t.equal(peerError({ code: ErrorCode.LIMIT }, ErrorCode.HANDSHAKE, 'x: ', 'no reason').code, ErrorCode.LIMIT, 'a code of ours is kept');
  const madeUp = peerError({ code: 'ERR_SHMBUS_MADE_UP', message: { toString: 0 } }, ErrorCode.HANDSHAKE, 'x: ', 'no reason');
  t.equal(madeUp.code, ErrorCode.HANDSHAKE, 'a code that is not ours: the fallback');
  t.equal(madeUp.message, 'x: no reason', 'a message that is not a string: the fallback text');
  t.equal(peerError('nonsense', ErrorCode.REMOTE, '', 'unknown').code, ErrorCode.REMOTE);
  t.equal(peerError({ message: 'm'.repeat(5000) }, ErrorCode.REMOTE, '', '').message.length, 1001, 'at most 1,000 characters of it, and an ellipsis');
  t.equal(remoteError({ code: 'ERR_SHMBUS_MADE_UP', message: 'boom' }).code, ErrorCode.REMOTE, 'request/reply: the same');
});

t.test('errorReply: whatever a handler throws becomes a reply', async (t) => {
  t.same(errorReply({ toString: 0 }), { code: ErrorCode.REMOTE, message: '{"toString":0}' });
  t.same(errorReply(new ShmbusError(ErrorCode.TIMEOUT, 'late')), { code: ErrorCode.TIMEOUT, message: 'late' });
});

t.test('isConnectionEnd: closed and peer-dead errors, nothing else', async (t) => {
  t.ok(isConnectionEnd(new ShmbusError(ErrorCode.CLOSED, 'closed')));
  t.ok(isConnectionEnd(new ShmbusError(ErrorCode.PEER_DEAD, 'gone')));
  t.notOk(isConnectionEnd(new ShmbusError(ErrorCode.TIMEOUT, 'late')));
  t.notOk(isConnectionEnd({ code: ErrorCode.CLOSED }), 'a look-alike is not one of ours');
  t.notOk(isConnectionEnd(undefined));
});
