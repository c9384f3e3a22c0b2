// Echo: every byte received is sent back, in order, with backpressure.
//
// The bytes stay in the host: each event moves what fits from the receive buffer to the
// send buffer, and what does not fit waits in the receive buffer (which pauses reading
// from the client) until a `send` event says the socket took some. So any amount passes
// through bounded buffers.
//
// It migrates (world `migrating-plugin`): on a swap, or when the host replaces a leaking
// instance with a fresh one, each connection moves to the new instance with what the
// echo knows of it (whether its client half-closed), and the new instance goes on at
// once with the bytes waiting in its receive buffer.

import {
  send, close, config, log, setSendEvents, recvBuffer,
} from 'sandport:handler/host@0.4.0';

// As many bytes as `pipeTo` may move: all that fit.
const ALL = 0xffffffff;

const encoder = new TextEncoder();

// The listener's config, read on the first event: `config` cannot be called while the
// module is being initialised at build time, and reading it per event would be waste.
let settings;

function readSettings() {
  // A `send` event matters only when a full send buffer stopped the echo (and each is
  // a call into JS): ask for those alone, instead of one after every write.
  setSendEvents('when-blocked');
  const greeting = config('greeting');
  const trigger = config('fault-trigger');
  return {
    greeting: greeting === undefined ? null : encoder.encode(`${greeting}\n`),
    // An empty trigger would match every buffer: treat it as none.
    trigger: trigger ? encoder.encode(trigger) : null,
  };
}

// Connections with bytes left in the receive buffer for want of room to send them.
// Only these need the `send` events: a call into JS costs tens of microseconds, so the
// others return at once.
const backlog = new Set();
// Connections whose client half-closed while their backlog waited.
const ending = new Set();

export const handler = {
  handle(conn, event, rx) {
    settings ??= readSettings();
    // Outside the `try` below: the trigger's exception must stay uncaught.
    if (event.tag === 'recv') checkFault(rx);
    try {
      react(conn, event, rx);
    } catch (e) {
      refused(conn, e);
    }
  },
};

// What a connection's hand-over carries: a format byte, then whether its client
// half-closed (1) or not (0). Whether its bytes wait for room needs no carrying: the
// take-over pumps at once, which finds it out again (and, as `send-room` answers 0 when
// there is none, is told when room comes).
const STATE_V1 = 1;

// `mbuf` handles from `recv-buffer` are dropped with this method (the bindings name it
// `Symbol.for('dispose')` where the engine has no `Symbol.dispose`).
const DISPOSE = Symbol.dispose ?? Symbol.for('dispose');

export const migrate = {
  // The listener's settings are the new instance's own to read: nothing to carry.
  handOverInstance() {
    return new Uint8Array(0);
  },

  takeOverInstance(state) {
    if (state.length > 0) log('warn', `echo: ignored ${state.length} bytes of instance state it cannot read`);
    // `set-send-events` holds per instance: ask before the first event, as `handle` does.
    settings ??= readSettings();
  },

  // Only reads: if the migration is called off, this instance serves `conn` on.
  handOver(conn) {
    return new Uint8Array([STATE_V1, ending.has(conn) ? 1 : 0]);
  },

  takeOver(conn, state) {
    // An old version may hand over no instance state, and so not call `takeOverInstance`.
    settings ??= readSettings();
    try {
      if (state.length !== 2 || state[0] !== STATE_V1 || state[1] > 1) {
        log('warn', `echo ${conn}: handed over with state it cannot read; closing it`);
        close(conn, 'after-send');
        return;
      }
      if (state[1] === 1) ending.add(conn);
      resume(conn);
    } catch (e) {
      refused(conn, e);
    }
  },
};

// Go on with a connection just taken over: whatever waits in its receive buffer (bytes
// that came in while the old instance waited for room, or between its last event and
// the hand-over) would otherwise wait for an event that may never come.
function resume(conn) {
  const rx = recvBuffer(conn);
  try {
    pump(conn, rx);
  } finally {
    rx[DISPOSE]();
  }
  if (!backlog.has(conn) && ending.delete(conn)) close(conn, 'after-send');
}

// What an exception `e` thrown while serving `conn` means. A refused host call throws an
// Error whose `payload` is the WIT `error`; `closed` only means the connection is going
// (its `close` event follows). Anything else is a bug, and rethrowing it traps, which
// the host logs as a fault.
function refused(conn, e) {
  if (!e.payload) throw e;
  if (e.payload.tag !== 'closed') log('warn', `echo ${conn}: ${describe(e.payload)}`);
}

function react(conn, event, rx) {
  switch (event.tag) {
    case 'accept':
      if (settings.greeting) send(conn, settings.greeting);
      break;
    case 'recv':
      pump(conn, rx);
      if (event.val === 0) {
        if (backlog.has(conn)) ending.add(conn);
        else close(conn, 'after-send');
      }
      break;
    case 'send':
      if (backlog.has(conn)) {
        pump(conn, rx);
        if (!backlog.has(conn) && ending.delete(conn)) close(conn, 'after-send');
      }
      break;
    case 'close':
      backlog.delete(conn);
      ending.delete(conn);
      break;
  }
}

// The fault trigger: an uncaught exception traps the instance, which the host logs as
// a fault. Only looked for when configured; `find` scans in the host without copying.
function checkFault(rx) {
  if (settings.trigger && rx.find(settings.trigger, 0) !== undefined) {
    throw new Error('echo: fault trigger received');
  }
}

// Copy what fits and note whether bytes are left behind.
function pump(conn, rx) {
  if (copy(conn, rx)) backlog.delete(conn);
  else backlog.add(conn);
}

// Move what fits from `rx` to the send buffer of `conn`, inside the host: the bytes
// never enter JavaScript, so they leave no garbage. Returns whether `rx` is empty.
function copy(conn, rx) {
  rx.pipeTo(conn, ALL);
  return rx.len() === 0;
}

function describe({ tag, val }) {
  return val === undefined ? tag : `${tag}: ${val}`;
}
