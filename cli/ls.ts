/** `shmbus ls`: the endpoints, buses and kernel objects shmbus made on this machine, each alive or dead. */
import { defineCommand, table, toJson } from './command.js';
import { listBuses, listEndpoints, listObjects } from './inspect.js';

const pidText = (p: { pid: number; alive: boolean }) => (p.pid === 0 ? '?' : `${p.pid}${p.alive ? '' : ' (dead)'}`);

export const ls = defineCommand({
  name: 'ls',
  summary: 'list endpoints, buses and the kernel objects shmbus made (alive or dead)',
  usage: `usage: shmbus ls [--json] [--endpoints] [--buses] [--objects]

  Lists, on this machine:
    endpoints  shm://, sysv:// and file:// endpoints: URL, transport, listener pid, and each connection's
               segment with the peer pids (a connection is the segment both ends map)
    buses      shm:// buses in /dev/shm: members, topics with their publisher and subscribers (pid, alive, lag)
    objects    what shmbus named in the kernel (bus files, wake semaphores and queues, handshake leftovers),
               each alive or dead; dead ones are what \`shmbus clean\` removes
  Only processes whose /proc the caller may read are seen (run as root to see every user's). Endpoints of the
  kernel transports (unix://, tcp://, fifo://, mq://, ...) carry no shmbus mark and are not listed.

    --endpoints, --buses, --objects   only those sections (default: all)
    --json                            one JSON object { endpoints, buses, objects, notes }`,
  options: {
    json: { type: 'boolean' },
    endpoints: { type: 'boolean' },
    buses: { type: 'boolean' },
    objects: { type: 'boolean' },
  },
  run({ values }) {
    const all = !values.endpoints && !values.buses && !values.objects;
    const endpoints = all || values.endpoints ? listEndpoints() : undefined;
    const buses = all || values.buses ? listBuses() : undefined;
    const survey = all || values.objects ? listObjects() : undefined;
    if (values.json) {
      console.log(toJson({ endpoints, buses, objects: survey?.objects, notes: survey?.notes }, 2));
      return 0;
    }
    const out: string[] = [];
    if (endpoints) {
      out.push(`endpoints (${endpoints.length})`);
      if (endpoints.length) {
        const rows = [['URL', 'TRANSPORT', 'LISTENER', 'CONNECTIONS', 'PEERS']];
        for (const e of endpoints) {
          rows.push([e.url, e.transport, e.listening ? pidText(e.listener) : 'closed', String(Math.max(e.sockets, e.connections.length)),
            e.connections.map((c) => c.peers.map(pidText).join('+') || '?').join(', ') || '-']);
        }
        out.push(table(rows));
      }
      out.push('');
    }
    if (buses) {
      out.push(`buses (${buses.length})`);
      for (const b of buses) {
        out.push(`${b.url}  ${b.alive ? 'alive' : 'dead'}  members: ${b.members.map(pidText).join(' ') || '-'}`);
        if (b.topics.length) {
          const rows = [['  TOPIC', 'POLICY', 'PUBLISHED', 'PUBLISHER', 'SUBSCRIBERS (pid:lag)']];
          for (const t of b.topics) {
            rows.push([`  ${t.name}`, t.policy, String(t.published), t.publisher ? pidText(t.publisher) : '-',
              t.subscribers.map((s) => `${pidText(s)}:${s.lag}${s.dropped ? ` dropped ${s.dropped}` : ''}`).join(' ') || '-']);
          }
          out.push(table(rows));
        }
      }
      out.push('');
    }
    if (survey) {
      out.push(`objects (${survey.objects.length})`);
      if (survey.objects.length) {
        const rows = [['KIND', 'STATE', 'UID', 'NAME', 'WHY']];
        for (const o of survey.objects) rows.push([o.kind, o.alive === undefined ? '?' : o.alive ? 'alive' : 'dead', String(o.uid), o.name, o.why]);
        out.push(table(rows));
      }
      for (const n of survey.notes) out.push(`note: ${n}`);
    }
    console.log(out.join('\n').trimEnd());
    return 0;
  },
});
