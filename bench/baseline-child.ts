// Receiving side of the baseline benchmarks in ./baselines.ts. It measures nothing: it
// reports that it is ready, counts what arrives and reports once when all of it is there;
// the parent keeps the time. Run as the compiled dist/bench/baseline-child.js:
//
//   fork IPC:    fork(child, ['ipc', kind, messages])
//                  → process.send({ t: 'ready' }) … process.send({ t: 'done', count })
//   unix socket: node child socket <kind> <messages> <payloadSize> <address>
//                  connects to <address> (a leading '@' stands for the abstract namespace's
//                  '\0', which cannot travel in argv), writes 'R' once connected and 'D'
//                  once all frames (u32 little-endian length + bytes) have arrived.
//
// The child exits by itself when the parent disconnects the IPC channel or closes the
// socket; the parent kills it if it does not.

import { connect, type Socket } from 'node:net';
import { unpack } from 'msgpackr';

type Kind = 'raw' | 'object';

function die(message: string): never {
  process.stderr.write(`baseline-child: ${message}\n`);
  process.exit(1);
}

function parseArgs(): { mode: 'ipc' | 'socket'; kind: Kind; messages: number; payloadSize: number; address: string } {
  const [mode, kind, messagesArg, payloadArg, addressArg] = process.argv.slice(2);
  if (mode !== 'ipc' && mode !== 'socket') die(`unknown mode ${String(mode)}`);
  if (kind !== 'raw' && kind !== 'object') die(`unknown kind ${String(kind)}`);
  const messages = Number(messagesArg);
  if (!Number.isSafeInteger(messages) || messages < 1) die(`bad message count ${String(messagesArg)}`);
  let payloadSize = 64;
  let address = '';
  if (mode === 'socket') {
    payloadSize = Number(payloadArg);
    if (!Number.isSafeInteger(payloadSize) || payloadSize < 1) die(`bad payload size ${String(payloadArg)}`);
    if (!addressArg) die('missing socket address');
    address = addressArg.startsWith('@') ? `\0${addressArg.slice(1)}` : addressArg;
  }
  return { mode, kind, messages, payloadSize, address };
}

function runIpc(kind: Kind, messages: number): void {
  if (typeof process.send !== 'function') die('ipc mode needs an IPC channel (start with fork)');
  const send = process.send.bind(process);
  let count = 0;
  process.on('message', (m: unknown) => {
    // A cheap sanity check per message so that a wrong payload cannot go unnoticed.
    if (kind === 'object') {
      if ((m as { id?: unknown } | null)?.id !== count) die(`message ${count}: unexpected ${JSON.stringify(m)}`);
    } else if (typeof m !== 'string' || m.length !== 64) {
      die(`message ${count}: expected a 64-character string`);
    }
    if (++count === messages) send({ t: 'done', count });
    else if (count > messages) die(`more than ${messages} messages`);
  });
  // The channel is the only handle: once the parent disconnects, the process exits.
  process.on('disconnect', () => process.exit(count === messages ? 0 : 1));
  send({ t: 'ready' });
}

function runSocket(kind: Kind, messages: number, payloadSize: number, address: string): void {
  const socket: Socket = connect(address);
  let count = 0;
  // Unparsed bytes carried over between chunks, and how many bytes the next attempt needs
  // (only concatenated once enough has arrived, so large frames are not re-copied per chunk).
  let parts: Buffer[] = [];
  let partsLength = 0;
  let need = 4;

  const onData = (chunk: Buffer): void => {
    let buf: Buffer;
    if (partsLength > 0) {
      parts.push(chunk);
      partsLength += chunk.length;
      if (partsLength < need) return;
      buf = Buffer.concat(parts, partsLength);
      parts = [];
      partsLength = 0;
    } else {
      buf = chunk;
    }
    const end = buf.length;
    let off = 0;
    while (end - off >= 4) {
      const len = buf.readUInt32LE(off);
      const start = off + 4;
      const stop = start + len;
      if (stop > end) break;
      if (kind === 'object') {
        // Decoding is part of the measured cost.
        const value = unpack(buf, { start, end: stop }) as { id?: unknown } | null;
        if (value?.id !== count) die(`frame ${count}: unexpected ${JSON.stringify(value)}`);
      } else if (len !== payloadSize) {
        die(`frame ${count}: ${len} bytes, expected ${payloadSize}`);
      }
      off = stop;
      if (++count === messages) socket.write('D');
      else if (count > messages) die(`more than ${messages} frames`);
    }
    if (off < end) {
      const rest = buf.subarray(off);
      parts = [rest];
      partsLength = rest.length;
      need = rest.length >= 4 ? 4 + rest.readUInt32LE(0) : 4;
    }
  };

  socket.on('connect', () => socket.write('R'));
  socket.on('data', onData);
  socket.on('error', (err) => die(`socket: ${err.message}`));
  // No other handles: once the parent closes the connection, the process exits.
  socket.on('close', () => {
    if (count !== messages) die(`socket closed after ${count} of ${messages} frames`);
  });
}

const args = parseArgs();
if (args.mode === 'ipc') runIpc(args.kind, args.messages);
else runSocket(args.kind, args.messages, args.payloadSize, args.address);
