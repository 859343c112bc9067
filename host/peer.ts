/**
 * Who is on the other end of a connection, as the kernel says (SO_PEERCRED on a Unix socket), never as the
 * peer says. Everything we act on for a peer (a pid to signal, a semaphore to post, a queue to open) must be
 * checked against these.
 */
export interface PeerCredentials {
  /** The peer's process id when it connected (or listened). */
  readonly pid: number;
  /** Its effective user id. */
  readonly uid: number;
  /** Its effective group id. */
  readonly gid: number;
}
