// Chat: a line-based chat room; every connection of the plugin instance is a member.
//
// A member is named `user` and its connection id (`user7`). A newcomer gets
// `* welcome NAME` (and `* MOTD` when the listener's config has `motd`), the others
// `* NAME joined`. Each line a member sends goes to every other member as `NAME: LINE`;
// a member that leaves makes the others read `* NAME left`. Commands:
//
//   /timer ID MILLIS   arm (or re-arm) timer ID: `* timer ID armed`, then `* timer ID fired`
//   /cancel ID         `* timer ID cancelled`, or `* timer ID not armed`
//   /quit              `* bye`, then end-of-stream
//   /drop              the connection closes at once
//
// Lines end with `\n`; a `\r` before it is dropped. The bytes of a line stay in the
// host's receive buffer until its `\n` arrives; a line longer than 4096 bytes gets
// `* line too long` and the connection closes. A member too slow to take a line misses
// it rather than holding up the room. A burst of lines is handled a slice per event
// (see DELIVERIES_PER_EVENT). The config's `fault-trigger`, sent as a line,
// makes the chat trap (to see the host contain a fault).

#include <stdlib.h>
#include <string.h>

#include "plugin.h"

typedef uint64_t conn_t;
typedef sandport_handler_host_borrow_mbuf_t mbuf_t;
typedef sandport_handler_host_error_t host_error_t;

// Longest line accepted, without its `\n`.
#define MAX_LINE 4096

// The id of the timer that resumes reading a member's lines where an event stopped;
// `/timer` ids stay below it.
#define RESUME_TIMER UINT64_MAX

// Lines delivered (one line to one member counts one) in one event, at most: a burst
// of short lines, or a big room, must not push an event past its CPU-time limit, which
// would fault the instance and so end the whole room. The rest waits in the receive
// buffer (the host stops reading the member meanwhile) for a timer that fires at once,
// on the loop's next turn. 4096 take under 10 ms of CPU time here, a tenth of the
// default limit (100 ms), leaving room for a slower machine.
#define DELIVERIES_PER_EVENT 4096

// The listener's configuration, read at the first event: it cannot change for the
// life of an instance.
static bool configured;
static bool has_motd, has_trigger;
static plugin_list_u8_t motd; // the whole line: `* MOTD\n`
static plugin_list_u8_t trigger;

// The members, in the order they joined. A room is small: a plain array will do.
static conn_t *members;
static size_t members_len, members_cap;

// The line being composed; the longest is a relayed one, `userID: ` + LINE + `\n`.
static uint8_t text[MAX_LINE + 64];
static size_t text_len;

static void add(const void *bytes, size_t len) {
  memcpy(text + text_len, bytes, len);
  text_len += len;
}

static void add_str(const char *s) { add(s, strlen(s)); }

// Writes `n` in decimal at `out` (room for 20 digits); returns how many it wrote.
static size_t format_u64(char *out, uint64_t n) {
  char digits[20];
  size_t i = sizeof digits;
  do digits[--i] = (char)('0' + n % 10);
  while (n /= 10);
  memcpy(out, digits + i, sizeof digits - i);
  return sizeof digits - i;
}

static void add_u64(uint64_t n) { text_len += format_u64((char *)text + text_len, n); }

// Logs `chat: userID` followed by `what` (not composed in `text`: it is called while
// `text` is being sent).
static void log_warn(conn_t about, const char *what) {
  char line[128] = "chat: user";
  size_t len = strlen(line);
  len += format_u64(line + len, about);
  size_t what_len = strnlen(what, sizeof line - len);
  memcpy(line + len, what, what_len);
  plugin_string_t message = {(uint8_t *)line, len + what_len};
  sandport_handler_host_log(SANDPORT_HANDLER_TYPES_LOG_LEVEL_WARN, &message);
}

// Starts a new line with `s`.
static void start(const char *s) {
  text_len = 0;
  add_str(s);
}

static void add_name(conn_t conn) {
  add_str("user");
  add_u64(conn);
}

// What a refused call means, for the member who asked.
static const char *reason(const host_error_t *err) {
  switch (err->tag) {
  case SANDPORT_HANDLER_TYPES_ERROR_CLOSED: return "connection closed";
  case SANDPORT_HANDLER_TYPES_ERROR_LIMIT_EXCEEDED: return "listener limit exceeded";
  case SANDPORT_HANDLER_TYPES_ERROR_NOT_ALLOWED: return "not allowed";
  case SANDPORT_HANDLER_TYPES_ERROR_INVALID: return "invalid argument";
  default: return "network failure";
  }
}

// Sends `len` bytes to `to`, or gives up on it: a full send buffer means a member
// that is not reading, and the room must not wait for it.
static void deliver(conn_t to, const uint8_t *bytes, size_t len) {
  plugin_list_u8_t data = {(uint8_t *)bytes, len};
  uint32_t room;
  host_error_t err;
  if (sandport_handler_host_send(to, &data, &room, &err)) return;
  // `closed`: the member is going, its `close` event follows.
  if (err.tag == SANDPORT_HANDLER_TYPES_ERROR_LIMIT_EXCEEDED) {
    log_warn(to, " is not reading; it misses a line");
  } else if (err.tag != SANDPORT_HANDLER_TYPES_ERROR_CLOSED) {
    log_warn(to, ": a send failed");
  }
  sandport_handler_host_error_free(&err); // may hold a string the bindings allocated
}

// Sends the composed line to `to`.
static void say(conn_t to) { deliver(to, text, text_len); }

// Sends the composed line to every member but `except`.
static void broadcast(conn_t except) {
  for (size_t i = 0; i < members_len; i++) {
    if (members[i] != except) say(members[i]);
  }
}

static void close_conn(conn_t conn, sandport_handler_types_close_mode_t mode) {
  host_error_t err;
  if (!sandport_handler_host_close(conn, mode, &err)) sandport_handler_host_error_free(&err);
}

// Whether the config has `key`; its value goes to `value`, a string we then own.
static bool config(const char *key, plugin_string_t *value) {
  plugin_string_t name;
  plugin_string_set(&name, key);
  return sandport_handler_host_config(&name, value);
}

static void read_config(void) {
  plugin_string_t value;
  if ((has_motd = config("motd", &value))) {
    motd.len = value.len + 3;
    motd.ptr = malloc(motd.len);
    memcpy(motd.ptr, "* ", 2);
    memcpy(motd.ptr + 2, value.ptr, value.len);
    motd.ptr[motd.len - 1] = '\n';
    plugin_string_free(&value);
  }
  if ((has_trigger = config("fault-trigger", &value))) {
    trigger.ptr = value.ptr; // kept for the life of the instance
    trigger.len = value.len;
  }
  // A member whose send buffer is full misses lines; nothing waits for room, so no
  // `send` event is of use: ask for the fewest there are.
  sandport_handler_host_set_send_events(SANDPORT_HANDLER_TYPES_SEND_EVENTS_WHEN_BLOCKED);
  configured = true;
}

static void join(conn_t conn) {
  start("* welcome ");
  add_name(conn);
  add_str("\n");
  say(conn);
  if (has_motd) deliver(conn, motd.ptr, motd.len);
  start("* ");
  add_name(conn);
  add_str(" joined\n");
  broadcast(conn);
  if (members_len == members_cap) {
    members_cap = members_cap ? 2 * members_cap : 8;
    members = realloc(members, members_cap * sizeof *members);
    if (!members) abort();
  }
  members[members_len++] = conn;
}

static void leave(conn_t conn) {
  for (size_t i = 0; i < members_len; i++) {
    if (members[i] == conn) {
      memmove(members + i, members + i + 1, (members_len - i - 1) * sizeof *members);
      members_len--;
      start("* ");
      add_name(conn);
      add_str(" left\n");
      broadcast(conn);
      return;
    }
  }
}

// A decimal number of at least 1 and below RESUME_TIMER (so, as a `/timer` id, never
// the chat's own), and nothing else.
static bool parse_positive(const uint8_t *s, size_t len, uint64_t *out) {
  uint64_t n = 0;
  if (len == 0) return false;
  for (size_t i = 0; i < len; i++) {
    if (s[i] < '0' || s[i] > '9') return false;
    uint64_t digit = s[i] - '0';
    if (n > (UINT64_MAX - digit) / 10) return false;
    n = n * 10 + digit;
  }
  *out = n;
  return n > 0 && n < RESUME_TIMER;
}

// Starts `* timer ID`.
static void start_timer(uint64_t id) {
  start("* timer ");
  add_u64(id);
}

// `/timer ID MILLIS` from `conn`; `arg` is what follows `/timer `.
static void timer_command(conn_t conn, const uint8_t *arg, size_t len) {
  const uint8_t *space = memchr(arg, ' ', len);
  uint64_t id, millis;
  if (!space || !parse_positive(arg, space - arg, &id) ||
      !parse_positive(space + 1, len - (space + 1 - arg), &millis)) {
    start("* usage: /timer ID MILLIS\n");
  } else {
    host_error_t err;
    start_timer(id);
    if (sandport_handler_host_set_timer(conn, id, millis, &err)) {
      add_str(" armed\n");
    } else {
      add_str(": ");
      add_str(reason(&err));
      add_str("\n");
      sandport_handler_host_error_free(&err);
    }
  }
  say(conn);
}

// `/cancel ID` from `conn`.
static void cancel_command(conn_t conn, const uint8_t *arg, size_t len) {
  uint64_t id;
  bool armed;
  host_error_t err;
  if (!parse_positive(arg, len, &id)) {
    start("* usage: /cancel ID\n");
  } else if (sandport_handler_host_cancel_timer(conn, id, &armed, &err)) {
    start_timer(id);
    add_str(armed ? " cancelled\n" : " not armed\n");
  } else {
    start_timer(id);
    add_str(": ");
    add_str(reason(&err));
    add_str("\n");
    sandport_handler_host_error_free(&err);
  }
  say(conn);
}

static bool equals(const uint8_t *bytes, size_t len, const char *word) {
  return len == strlen(word) && memcmp(bytes, word, len) == 0;
}

// A complete line from `conn`, without its line ending. Returns whether to go on
// with the next one (not after the member asked to leave).
static bool on_line(conn_t conn, const uint8_t *line, size_t len) {
  if (has_trigger && len == trigger.len && memcmp(line, trigger.ptr, len) == 0) {
    __builtin_trap();
  }
  // A command is the first word; its argument, the rest after one space.
  const uint8_t *space = memchr(line, ' ', len);
  size_t word = space ? (size_t)(space - line) : len;
  const uint8_t *arg = space ? space + 1 : line + len;
  size_t arg_len = len - (arg - line);
  if (equals(line, word, "/quit")) {
    start("* bye\n");
    say(conn);
    close_conn(conn, SANDPORT_HANDLER_TYPES_CLOSE_MODE_AFTER_SEND);
    return false;
  }
  if (equals(line, word, "/drop")) {
    close_conn(conn, SANDPORT_HANDLER_TYPES_CLOSE_MODE_NOW);
    return false;
  }
  if (equals(line, word, "/timer")) {
    timer_command(conn, arg, arg_len);
  } else if (equals(line, word, "/cancel")) {
    cancel_command(conn, arg, arg_len);
  } else {
    text_len = 0;
    add_name(conn);
    add_str(": ");
    add(line, len);
    add_str("\n");
    broadcast(conn);
  }
  return true;
}

// Handles the complete lines in the receive buffer, in order, up to
// DELIVERIES_PER_EVENT; the RESUME_TIMER brings the rest. The bytes of an incomplete
// line stay in the buffer (the host's memory, not ours) for the next time.
static void read_lines(conn_t conn, mbuf_t rx) {
  plugin_list_u8_t newline = {(uint8_t *)"\n", 1};
  size_t deliveries = 0;
  for (;;) {
    if (deliveries >= DELIVERIES_PER_EVENT) {
      host_error_t err;
      if (!sandport_handler_host_set_timer(conn, RESUME_TIMER, 0, &err)) {
        log_warn(conn, ": cannot resume reading its lines");
        sandport_handler_host_error_free(&err);
      }
      return;
    }
    uint32_t at;
    bool found = sandport_handler_host_method_mbuf_find(rx, &newline, 0, &at);
    if (found ? at > MAX_LINE : sandport_handler_host_method_mbuf_len(rx) > MAX_LINE) {
      start("* line too long\n");
      say(conn);
      close_conn(conn, SANDPORT_HANDLER_TYPES_CLOSE_MODE_AFTER_SEND);
      return;
    }
    if (!found) return;
    plugin_list_u8_t line;
    host_error_t err;
    sandport_handler_host_method_mbuf_read(rx, 0, at, &line);
    if (!sandport_handler_host_remove(conn, at + 1, &err)) {
      sandport_handler_host_error_free(&err); // the connection is closing
      plugin_list_u8_free(&line);
      return;
    }
    size_t len = line.len;
    if (len > 0 && line.ptr[len - 1] == '\r') len--;
    deliveries += members_len ? members_len : 1;
    bool go_on = on_line(conn, line.ptr, len);
    plugin_list_u8_free(&line);
    if (!go_on) return;
  }
}

void exports_sandport_handler_handler_handle(conn_t conn, sandport_handler_types_event_t *ev,
                                             mbuf_t rx) {
  if (!configured) read_config();
  switch (ev->tag) {
  case SANDPORT_HANDLER_TYPES_EVENT_ACCEPT:
    join(conn);
    break;
  case SANDPORT_HANDLER_TYPES_EVENT_RECV:
    if (ev->val.recv > 0) {
      read_lines(conn, rx);
    } else {
      close_conn(conn, SANDPORT_HANDLER_TYPES_CLOSE_MODE_AFTER_SEND); // the member hung up
    }
    break;
  case SANDPORT_HANDLER_TYPES_EVENT_TIMER:
    if (ev->val.timer == RESUME_TIMER) {
      read_lines(conn, rx);
    } else {
      start_timer(ev->val.timer);
      add_str(" fired\n");
      say(conn);
    }
    break;
  case SANDPORT_HANDLER_TYPES_EVENT_CLOSE:
    leave(conn);
    break;
  }
  // The event is ours to free (an accept carries the peer's address as a string).
  // The borrowed `rx` needs no drop: the bindings were generated with autodrop.
  sandport_handler_types_event_free(ev);
}
