// Chat: a line-based chat room; every connection of the instance is a member.
//
// A member is called `user` and its connection id. Each line a member sends goes to
// every other member as `NAME: LINE`; a few lines starting with `/` are commands
// (/timer, /cancel, /quit, /drop). Lines stay in the host's receive buffer until their
// `\n` arrives, so a line split across writes costs nothing until it is complete.

import { send, remove, setTimer, cancelTimer, close, config, log } from 'sandport:handler/host@0.1.0';

// Longest line accepted, without its `\n` (a `\r` before it counts).
const MAX_LINE = 4096;
const NEWLINE = new Uint8Array([0x0a]);
const CR = 0x0d;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// Member names by connection id (a BigInt, which a Map compares by value).
const members = new Map();

// The listener's config, read on the first event: `config` cannot be called while the
// module is being initialised at build time.
let settings;

function readSettings() {
  const trigger = config('fault-trigger');
  return {
    motd: config('motd'),
    // An empty trigger would equal every empty line: treat it as none.
    trigger: trigger ? encoder.encode(trigger) : null,
  };
}

export const handler = {
  handle(conn, event, rx) {
    settings ??= readSettings();
    switch (event.tag) {
      case 'accept':
        join(conn);
        break;
      case 'recv':
        if (event.val === 0) end(conn);
        else readLines(conn, rx);
        break;
      case 'timer':
        if (members.has(conn)) deliver(conn, `* timer ${event.val} fired\n`);
        break;
      case 'close':
        leave(conn);
        break;
    }
  },
};

function join(conn) {
  const name = `user${conn}`;
  deliver(conn, `* welcome ${name}\n`);
  if (settings.motd !== undefined) deliver(conn, `* ${settings.motd}\n`);
  broadcast(conn, `* ${name} joined\n`);
  members.set(conn, name);
}

function leave(conn) {
  const name = members.get(conn);
  if (name === undefined) return;
  members.delete(conn);
  broadcast(conn, `* ${name} left\n`);
}

// The client sent its last byte; a partial line left behind is dropped.
function end(conn) {
  closeMember(conn, 'after-send');
}

// Handle every complete line in the receive buffer, in order. Stops when the member
// is closed by one of them.
function readLines(conn, rx) {
  for (;;) {
    const at = rx.find(NEWLINE, 0);
    const tooLong = at === undefined ? rx.len() > MAX_LINE : at > MAX_LINE;
    if (tooLong) {
      deliver(conn, '* line too long\n');
      closeMember(conn, 'after-send');
      return;
    }
    if (at === undefined) return; // the rest of the line is still on its way
    let line = rx.read(0, at);
    if (!attempt(`reading user${conn}`, () => remove(conn, at + 1))) return;
    if (line.at(-1) === CR) line = line.subarray(0, -1);
    if (!onLine(conn, line)) return;
  }
}

// One complete line: a command, or a message for the others. Returns whether the
// member is still there to read more lines.
function onLine(conn, line) {
  if (settings.trigger && sameBytes(line, settings.trigger)) {
    // Uncaught: the instance traps, and the host logs it as a fault.
    throw new Error('chat: fault trigger received');
  }
  if (line[0] !== 0x2f /* '/' */) {
    relay(conn, line);
    return true;
  }
  const text = decoder.decode(line);
  const space = text.indexOf(' ');
  const [word, arg] = space < 0 ? [text, ''] : [text.slice(0, space), text.slice(space + 1)];
  switch (word) {
    case '/timer':
      timer(conn, arg);
      return true;
    case '/cancel':
      cancel(conn, arg);
      return true;
    case '/quit':
      if (arg !== '') break;
      deliver(conn, '* bye\n');
      closeMember(conn, 'after-send');
      return false;
    case '/drop':
      if (arg !== '') break;
      closeMember(conn, 'now');
      return false;
  }
  relay(conn, line);
  return true;
}

// `/timer ID MILLIS`: arm (or re-arm) one of the member's timers.
function timer(conn, arg) {
  const [id, millis, extra] = arg.split(' ');
  const idNum = parseCount(id);
  const msNum = parseCount(millis);
  if (idNum === null || msNum === null || extra !== undefined) {
    deliver(conn, '* usage: /timer ID MILLIS\n');
    return;
  }
  if (attempt(`timer of user${conn}`, () => setTimer(conn, idNum, msNum))) {
    deliver(conn, `* timer ${idNum} armed\n`);
  } else {
    deliver(conn, `* timer ${idNum} refused\n`);
  }
}

// `/cancel ID`: disarm one of the member's timers.
function cancel(conn, arg) {
  const id = parseCount(arg);
  if (id === null) {
    deliver(conn, '* usage: /cancel ID\n');
    return;
  }
  let armed = false;
  attempt(`timer of user${conn}`, () => (armed = cancelTimer(conn, id)));
  deliver(conn, `* timer ${id} ${armed ? 'cancelled' : 'not armed'}\n`);
}

// A decimal number from 1 to the largest u64, as the BigInt the WIT's u64 takes; null
// for anything else.
function parseCount(text) {
  if (!/^[0-9]{1,20}$/.test(text ?? '')) return null;
  const n = BigInt(text);
  return n >= 1n && n < 2n ** 64n ? n : null;
}

// `NAME: LINE` to every other member. Bytes, not text: a line need not be UTF-8.
function relay(from, line) {
  const name = members.get(from);
  if (name === undefined) return;
  const prefix = encoder.encode(`${name}: `);
  const message = new Uint8Array(prefix.length + line.length + 1);
  message.set(prefix);
  message.set(line, prefix.length);
  message[message.length - 1] = 0x0a;
  broadcast(from, message);
}

function broadcast(except, message) {
  const bytes = typeof message === 'string' ? encoder.encode(message) : message;
  for (const to of members.keys()) {
    if (to !== except) deliver(to, bytes);
  }
}

// Send `message` to `to`, giving up on it rather than waiting: a full send buffer
// means a member that is not reading, and the room must not stall for it.
function deliver(to, message) {
  const bytes = typeof message === 'string' ? encoder.encode(message) : message;
  attempt(`user${to} missed a line`, () => send(to, bytes));
}

function closeMember(conn, mode) {
  attempt(`closing user${conn}`, () => close(conn, mode));
}

// Run a host call; returns whether it succeeded. A refused call throws an Error whose
// `payload` is the WIT `error`: `closed` only means the connection is going (its
// `close` event follows), anything else is logged. An exception without a payload is
// a bug: rethrown, it traps.
function attempt(what, call) {
  try {
    call();
    return true;
  } catch (e) {
    if (!e.payload) throw e;
    const { tag, val } = e.payload;
    if (tag !== 'closed') log('warn', `chat: ${what}: ${tag}${val === undefined ? '' : ` (${val})`}`);
    return false;
  }
}

function sameBytes(a, b) {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}
