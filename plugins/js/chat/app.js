// Chat: a line-based chat room; every connection of the instance is a member.
//
// A member is called `user` and its connection id. Each line a member sends goes to
// every other member as `NAME: LINE`; a few lines starting with `/` are commands
// (/timer, /cancel, /quit, /drop).
//
// The engine interprets JS (no JIT inside wasm) and each call into the host costs
// microseconds, while an event may use only `event-timeout-ms` of CPU (100 ms by
// default) before the host stops the instance. So the chat reads the receive buffer in
// large windows, collects each member's output of an event and sends it in one call at
// the end, and stops after a time budget, to go on reading when its own timer fires.
//
// It migrates (world `migrating-plugin`): on a swap, or when the host replaces a leaking
// instance with a fresh one, the room moves to the new instance member by member, each
// with its connection (see `migrate` below), and nobody is told that anyone left or
// joined.

import {
  send, sendRoom, remove, setTimer, cancelTimer, close, config, log, setSendEvents, recvBuffer,
} from 'sandport:handler/host@0.4.0';

// Longest line accepted, without its `\n` (a `\r` before it counts).
const MAX_LINE = 4096;
// The most bytes read from the receive buffer at once.
const WINDOW = 64 * 1024;
// How long one event may spend reading lines before it leaves the rest for later.
const BUDGET_MS = 20;
// The member's own timer that goes on reading; ids the member arms start at 1.
const READ_ON = 0n;

const LF = 0x0a;
const CR = 0x0d;
const SLASH = 0x2f;
const NEWLINE = new Uint8Array([LF]);

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// `mbuf` handles from `recv-buffer` are dropped with this method (the bindings name it
// `Symbol.for('dispose')` where the engine has no `Symbol.dispose`).
const DISPOSE = Symbol.dispose ?? Symbol.for('dispose');

// The members by connection id (a BigInt, which a Map compares by value): their name,
// the `NAME: ` that starts their lines, encoded once, and the timers they armed with
// `/timer` (see `Member`).
const members = new Map();

// What each member is to get from this event, sent at its end (see `flush`).
const outbox = new Map();
// Members whose client sent its last byte: they are closed once their lines are read.
const ending = new Set();

// The listener's config, read on the first event: `config` cannot be called while the
// module is being initialised at build time.
let settings;

function readSettings() {
  // A member whose send buffer is full misses lines; nothing waits for room, so no
  // `send` event is of use (each is a call into JS): ask for the fewest there are.
  setSendEvents('when-blocked');
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
        if (event.val === 0) ending.add(conn);
        readOn(conn, rx);
        break;
      case 'timer':
        if (event.val === READ_ON) readOn(conn, rx);
        else if (members.has(conn)) fired(conn, event.val);
        break;
      case 'close':
        leave(conn);
        break;
    }
    for (const to of outbox.keys()) flush(to);
  },
};

// Live migration. The room is its members, and a member is known by its connection,
// whose id may differ in the new instance: so each member moves with its connection's
// `hand-over`, and the instance itself carries nothing (the new one reads its own
// settings). A member's state is JSON text: `{"chat":1,"name":...,"ending":...,
// "timers":[[ID,MILLIS LEFT],...]}`, ids and times as decimal strings (u64s).
export const migrate = {
  handOverInstance() {
    return new Uint8Array(0);
  },

  takeOverInstance(state) {
    if (state.length > 0) log('warn', `chat: ignored ${state.length} bytes of instance state it cannot read`);
    // `set-send-events` holds per instance: ask before the first event, as `handle` does.
    settings ??= readSettings();
  },

  // Only reads: if the migration is called off, this instance serves the member on.
  handOver(conn) {
    const member = members.get(conn);
    // Every connection joins on accept; one without a member carries nothing, and the
    // next version closes it.
    if (!member) return new Uint8Array(0);
    const now = performance.now();
    const timers = [...member.timers].map(([id, { at, millis }]) => {
      const left = millis - BigInt(Math.floor(now - at));
      return [`${id}`, `${left > 0n ? left : 0n}`];
    });
    return encoder.encode(JSON.stringify({ chat: 1, name: member.name, ending: ending.has(conn), timers }));
  },

  takeOver(conn, state) {
    // An old version may hand over no instance state, and so not call `takeOverInstance`.
    settings ??= readSettings();
    const taken = readMember(state);
    if (!taken) {
      log('warn', `chat: user${conn} was handed over with state it cannot read; closing it`);
      attempt(`closing user${conn}`, () => close(conn, 'after-send'));
      return;
    }
    const member = new Member(taken.name);
    members.set(conn, member);
    if (taken.ending) ending.add(conn);
    // Re-armed with the time each had left: the old instance's timers need not still be
    // armed here.
    for (const [id, left] of taken.timers) {
      if (attempt(`timer of ${taken.name}`, () => setTimer(conn, id, left))) {
        member.timers.set(id, { at: performance.now(), millis: left });
      }
    }
    // Lines waiting in its receive buffer (a burst the old instance paused on), or a
    // client that has finished, would otherwise wait for an event that may never come.
    // Read on from the timer, once the whole room is here, not now.
    if (taken.ending || hasLine(conn)) attempt(`reading ${taken.name}`, () => setTimer(conn, READ_ON, 1n));
  },
};

// A member from what `handOver` made, or null if it is not one.
function readMember(state) {
  let value;
  try {
    value = JSON.parse(decoder.decode(state));
  } catch {
    return null;
  }
  const { chat, name, ending: ended, timers } = value ?? {};
  const valid =
    chat === 1 &&
    typeof name === 'string' &&
    /^[^\s\x00-\x1f\x7f]{1,64}$/.test(name) &&
    typeof ended === 'boolean' &&
    Array.isArray(timers) &&
    timers.every((t) => Array.isArray(t) && t.length === 2 && parseCount(t[0]) !== null && parseU64(t[1]) !== null);
  if (!valid) return null;
  return { name, ending: ended, timers: timers.map(([id, left]) => [parseCount(id), parseU64(left)]) };
}

// Whether a complete line waits in the receive buffer of `conn`.
function hasLine(conn) {
  let rx;
  if (!attempt(`reading user${conn}`, () => (rx = recvBuffer(conn)))) return false;
  try {
    return rx.find(NEWLINE, 0) !== undefined;
  } finally {
    rx[DISPOSE]();
  }
}

function join(conn) {
  const name = `user${conn}`;
  deliver(conn, `* welcome ${name}\n`);
  if (settings.motd !== undefined) deliver(conn, `* ${settings.motd}\n`);
  broadcast(conn, `* ${name} joined\n`);
  members.set(conn, new Member(name));
}

// What the room knows of a member.
class Member {
  constructor(name) {
    this.name = name;
    this.prefix = encoder.encode(`${name}: `);
    // Its armed timers, by id: when each was armed (`performance.now()`) and its delay in
    // milliseconds (a BigInt), so that a hand-over can say how long each has left.
    this.timers = new Map();
  }
}

function leave(conn) {
  const member = members.get(conn);
  if (!member) return;
  members.delete(conn);
  dropOutbox(conn);
  ending.delete(conn);
  broadcast(conn, `* ${member.name} left\n`);
}

// Read what has arrived; after the client's last byte, close (a partial line is
// dropped) once the complete lines are handled.
function readOn(conn, rx) {
  const paused = readLines(conn, rx);
  if (!paused && ending.delete(conn)) closeMember(conn, 'after-send');
}

// Handle the complete lines in the receive buffer, in order, and remove them; a partial
// line stays there until the rest arrives. Returns whether it paused for its time
// budget, leaving lines for its READ_ON timer.
function readLines(conn, rx) {
  const deadline = performance.now() + BUDGET_MS;
  let data = new Uint8Array(0);
  let start = 0;
  let work = 0; // lines times their readers since the clock was last looked at
  try {
    for (;;) {
      let end = data.indexOf(LF, start);
      if (end < 0) {
        // The window is used up: drop what was handled and read the next one.
        if (start > 0 && !attempt(`reading user${conn}`, () => remove(conn, start))) return false;
        // `find` scans in the host: the bytes cross into JS only once a line is complete.
        if (rx.find(NEWLINE, 0) === undefined) {
          if (rx.len() > MAX_LINE) tooLong(conn);
          return false;
        }
        free(data);
        data = rx.read(0, WINDOW);
        start = 0;
        end = data.indexOf(LF);
      }
      if (end < 0 || end - start > MAX_LINE) {
        tooLong(conn);
        return false;
      }
      const line = data.subarray(start, end > start && data[end - 1] === CR ? end - 1 : end);
      start = end + 1;
      if (!onLine(conn, line)) return false; // the member is closing: its other lines are moot
      work += members.size;
      if (work < 256) continue;
      work = 0;
      // Out of time: the timer goes on reading in a later event (or, should the member
      // have used up the listener's timers, this one goes on).
      if (performance.now() > deadline && attempt(`timer of user${conn}`, () => setTimer(conn, READ_ON, 1n))) {
        attempt(`reading user${conn}`, () => remove(conn, start));
        return true;
      }
    }
  } finally {
    free(data);
  }
}

function tooLong(conn) {
  deliver(conn, '* line too long\n');
  closeMember(conn, 'after-send');
}

// One complete line: a command, or a message for the others. Returns whether the
// member is still there to read more lines.
function onLine(conn, line) {
  if (settings.trigger && sameBytes(line, settings.trigger)) {
    // Uncaught: the instance traps, and the host logs it as a fault.
    throw new Error('chat: fault trigger received');
  }
  if (line[0] === SLASH) {
    const stays = command(conn, decoder.decode(line));
    if (stays !== undefined) return stays;
  }
  relay(conn, line);
  return true;
}

// Run `text` if it is a command, and return whether the member stays; undefined when it
// is not a command (`/quit now` is a message like any other).
function command(conn, text) {
  switch (text) {
    case '/quit':
      deliver(conn, '* bye\n');
      closeMember(conn, 'after-send');
      return false;
    case '/drop':
      closeMember(conn, 'now');
      return false;
  }
  const space = text.indexOf(' ');
  const word = space < 0 ? text : text.slice(0, space);
  const arg = space < 0 ? '' : text.slice(space + 1);
  switch (word) {
    case '/timer':
      armTimer(conn, arg);
      return true;
    case '/cancel':
      cancel(conn, arg);
      return true;
  }
  return undefined;
}

// `/timer ID MILLIS`: arm (or re-arm) one of the member's timers.
function armTimer(conn, arg) {
  const [idText, millisText, extra] = arg.split(' ');
  const id = parseCount(idText);
  const millis = parseCount(millisText);
  if (id === null || millis === null || extra !== undefined) {
    deliver(conn, '* usage: /timer ID MILLIS\n');
    return;
  }
  const armed = attempt(`timer of user${conn}`, () => setTimer(conn, id, millis));
  if (armed) members.get(conn).timers.set(id, { at: performance.now(), millis });
  // Refused only past the listener's `max-timers`.
  deliver(conn, `* timer ${id} ${armed ? 'armed' : 'refused'}\n`);
}

// `/cancel ID`: disarm one of the member's timers.
function cancel(conn, arg) {
  const id = parseCount(arg);
  if (id === null) {
    deliver(conn, '* usage: /cancel ID\n');
    return;
  }
  let wasArmed = false;
  attempt(`timer of user${conn}`, () => (wasArmed = cancelTimer(conn, id)));
  members.get(conn).timers.delete(id);
  deliver(conn, `* timer ${id} ${wasArmed ? 'cancelled' : 'not armed'}\n`);
}

// One of the member's timers fired.
function fired(conn, id) {
  members.get(conn).timers.delete(id);
  deliver(conn, `* timer ${id} fired\n`);
}

// A decimal number from 1 to the largest u64, as the BigInt the WIT's u64 takes; null
// for anything else.
function parseCount(text) {
  const n = parseU64(text);
  return n !== null && n >= 1n ? n : null;
}

// A decimal u64 (0 included) as a BigInt; null for anything else.
function parseU64(text) {
  if (!/^[0-9]{1,20}$/.test(text ?? '')) return null;
  const n = BigInt(text);
  return n < 2n ** 64n ? n : null;
}

// `NAME: LINE` to every other member. Bytes, not text: a line need not be UTF-8.
function relay(from, line) {
  const { prefix } = members.get(from);
  const size = prefix.length + line.length + 1;
  if (scratch.length < size) scratch = new Uint8Array(Math.max(size, 2 * scratch.length));
  scratch.set(prefix);
  scratch.set(line, prefix.length);
  scratch[size - 1] = LF;
  broadcast(from, scratch.subarray(0, size));
}

// Where `relay` puts a line together, reused: a line is copied into each member's
// outbox, so it needs no bytes of its own.
let scratch = new Uint8Array(256);

function broadcast(except, message) {
  const bytes = typeof message === 'string' ? encoder.encode(message) : message;
  for (const to of members.keys()) {
    if (to !== except) deliver(to, bytes);
  }
}

// Add a line to what `to` gets at the end of the event, if its send buffer will have
// room for it. One that will not misses the line: a full send buffer means a member
// that is not reading, and the room must not wait for it.
function deliver(to, message) {
  const bytes = typeof message === 'string' ? encoder.encode(message) : message;
  const box = outboxOf(to);
  if (bytes.length > box.room) {
    box.missed++;
    return;
  }
  if (box.used + bytes.length > box.bytes.length) {
    const bigger = new Uint8Array(Math.min(box.room + box.used, 2 * (box.used + bytes.length)));
    bigger.set(box.bytes.subarray(0, box.used));
    free(box.bytes);
    box.bytes = bigger;
  }
  box.bytes.set(bytes, box.used);
  box.used += bytes.length;
  box.room -= bytes.length;
}

// The outbox of `to` in this event. Its room is the send buffer's: the host writes to
// sockets only between events, so within one event only our own sends use it up.
function outboxOf(to) {
  let box = outbox.get(to);
  if (!box) {
    box = { bytes: new Uint8Array(256), used: 0, room: 0, missed: 0, closing: false };
    // A closing member has no room, and what it misses is no news.
    box.closing = !attempt(`sending to user${to}`, () => (box.room = sendRoom(to)));
    outbox.set(to, box);
  }
  return box;
}

// Send what `to` got in this event, in one call.
function flush(to) {
  const box = outbox.get(to);
  if (!box) return;
  outbox.delete(to);
  if (box.used > 0) attempt(`sending to user${to}`, () => send(to, box.bytes.subarray(0, box.used)));
  free(box.bytes);
  if (box.missed > 0 && !box.closing) log('warn', `chat: user${to} is not reading; it missed ${box.missed} line(s)`);
}

// Free the bytes of `array` now rather than at the next garbage collection: the engine
// expects short-lived instances and collects late, and a busy room would otherwise
// reach the listener's memory limit first.
function free(array) {
  array.buffer.transfer(0);
}

function dropOutbox(conn) {
  const box = outbox.get(conn);
  if (!box) return;
  outbox.delete(conn);
  free(box.bytes);
}

// Close a member: `after-send` first sends what it has queued (say `* bye`), `now`
// drops it.
function closeMember(conn, mode) {
  if (mode === 'now') dropOutbox(conn);
  else flush(conn);
  attempt(`closing user${conn}`, () => close(conn, mode));
}

// Run a host call; returns whether it succeeded.
function attempt(what, call) {
  try {
    call();
    return true;
  } catch (e) {
    warnUnlessClosed(e, what);
    return false;
  }
}

// A refused host call throws an Error whose `payload` is the WIT `error`: `closed` only
// means the connection is going (its `close` event follows), anything else is logged.
// An exception without a payload is a bug: rethrown, it traps.
function warnUnlessClosed(e, what) {
  if (!e.payload) throw e;
  const { tag, val } = e.payload;
  if (tag !== 'closed') log('warn', `chat: ${what}: ${tag}${val === undefined ? '' : ` (${val})`}`);
}

function sameBytes(a, b) {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}
