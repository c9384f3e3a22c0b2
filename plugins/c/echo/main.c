// Echo: every byte received is sent back, in order, on the same connection.
//
// The bytes stay in the host. Each event moves what fits (the send buffer's room) from
// the receive buffer to the send buffer, inside the host (`mbuf.pipe-to`: they never
// enter guest memory). When the client does not read its echo the send buffer fills, the rest waits
// in the receive buffer, the host stops reading from the client, and the next `send`
// event (the socket took some bytes; asked for only in that case, see `read_config`)
// resumes. So any amount passes through bounded
// buffers.
//
// When the client half-closes (`recv(0)`) bytes may still wait for room: the echo
// remembers the connection and closes it (after sending) once the last of them is in
// the send buffer, so the client reads its whole echo, then end-of-stream.
//
// Configuration (optional, under `[listener.config]`): `greeting`, a line sent on
// accept; `fault-trigger`, bytes that make the echo trap when they arrive (to see the
// host contain a fault).

#include <stdlib.h>
#include <string.h>

#include "plugin.h"

typedef uint64_t conn_t;
typedef sandport_handler_host_borrow_mbuf_t mbuf_t;
typedef sandport_handler_host_error_t host_error_t;

// Set up at the first event: the listener's configuration, read once since it cannot
// change for the life of an instance, and when `send` events come.
static bool configured;
static bool has_greeting, has_trigger;
static plugin_list_u8_t greeting; // with its '\n'
static plugin_list_u8_t trigger;

// Connections whose client half-closed while part of their echo waited for room.
// Few at a time, so a plain array.
static conn_t *ending;
static size_t ending_len, ending_cap;

// A string literal as the bindings take strings (pointer and length; no copy).
#define STRING(literal) ((plugin_string_t){(uint8_t *)(literal), sizeof(literal) - 1})

static void log_warn(plugin_string_t message) {
  sandport_handler_host_log(SANDPORT_HANDLER_TYPES_LOG_LEVEL_WARN, &message);
}

// Whether the config has `key`; its value goes to `value`, a string we then own.
static bool config(plugin_string_t key, plugin_string_t *value) {
  return sandport_handler_host_config(&key, value);
}

static void read_config(void) {
  plugin_string_t value;
  if ((has_greeting = config(STRING("greeting"), &value))) {
    greeting.len = value.len + 1;
    greeting.ptr = malloc(greeting.len);
    memcpy(greeting.ptr, value.ptr, value.len);
    greeting.ptr[value.len] = '\n';
    plugin_string_free(&value);
  }
  if ((has_trigger = config(STRING("fault-trigger"), &value))) {
    trigger.ptr = value.ptr; // kept for the life of the instance
    trigger.len = value.len;
  }
  // A `send` event matters to an echo only when a full send buffer stopped it: ask for
  // those alone, instead of one after every write.
  sandport_handler_host_set_send_events(SANDPORT_HANDLER_TYPES_SEND_EVENTS_WHEN_BLOCKED);
  configured = true;
}

static void ending_add(conn_t conn) {
  if (ending_len == ending_cap) {
    ending_cap = ending_cap ? 2 * ending_cap : 4;
    ending = realloc(ending, ending_cap * sizeof *ending);
    if (!ending) abort();
  }
  ending[ending_len++] = conn;
}

// Forgets `conn` if it was ending; returns whether it was.
static bool ending_take(conn_t conn) {
  for (size_t i = 0; i < ending_len; i++) {
    if (ending[i] == conn) {
      ending[i] = ending[--ending_len];
      return true;
    }
  }
  return false;
}

// A refused call: `closed` only means the connection is going (its `close` event
// follows), anything else is worth a line in the host's log. Either way the error
// may hold a string the bindings allocated.
static void refused(host_error_t *err) {
  if (err->tag != SANDPORT_HANDLER_TYPES_ERROR_CLOSED) {
    log_warn(STRING("echo: the host refused a send"));
  }
  sandport_handler_host_error_free(err);
}

// Moves as much as fits from the receive buffer to the send buffer, in one host call;
// what does not fit waits there for the next `send` event.
static void pump(conn_t conn, mbuf_t rx) {
  host_error_t err;
  uint32_t moved;
  if (!sandport_handler_host_method_mbuf_pipe_to(rx, conn, UINT32_MAX, &moved, &err)) refused(&err);
}

static void close_after_send(conn_t conn) {
  host_error_t err;
  if (!sandport_handler_host_close(conn, SANDPORT_HANDLER_TYPES_CLOSE_MODE_AFTER_SEND, &err)) {
    sandport_handler_host_error_free(&err);
  }
}

// The fault trigger, looked for only among the `n` bytes that just arrived (and the
// few before them an occurrence could start in): the older bytes were looked at when
// they arrived.
static void trap_on_trigger(mbuf_t rx, uint32_t n) {
  uint32_t len = sandport_handler_host_method_mbuf_len(rx);
  uint32_t back = n + (uint32_t)trigger.len - 1;
  uint32_t at;
  if (sandport_handler_host_method_mbuf_find(rx, &trigger, len > back ? len - back : 0, &at)) {
    __builtin_trap();
  }
}

void exports_sandport_handler_handler_handle(conn_t conn, sandport_handler_types_event_t *ev,
                                             mbuf_t rx) {
  if (!configured) read_config();
  switch (ev->tag) {
  case SANDPORT_HANDLER_TYPES_EVENT_ACCEPT:
    if (has_greeting) {
      host_error_t err;
      uint32_t room;
      if (!sandport_handler_host_send(conn, &greeting, &room, &err)) refused(&err);
    }
    break;
  case SANDPORT_HANDLER_TYPES_EVENT_RECV:
    if (ev->val.recv > 0) {
      if (has_trigger) trap_on_trigger(rx, ev->val.recv);
      pump(conn, rx);
    } else {
      pump(conn, rx);
      if (sandport_handler_host_method_mbuf_len(rx) == 0) {
        close_after_send(conn); // the client half-closed and has all its echo
      } else {
        ending_add(conn); // the rest goes out at later `send` events
      }
    }
    break;
  case SANDPORT_HANDLER_TYPES_EVENT_SEND:
    // Waiting for room, yet the receive buffer may have been emptied meanwhile.
    if (sandport_handler_host_method_mbuf_len(rx) > 0) {
      pump(conn, rx);
      if (sandport_handler_host_method_mbuf_len(rx) > 0) break;
    }
    if (ending_len > 0 && ending_take(conn)) close_after_send(conn);
    break;
  case SANDPORT_HANDLER_TYPES_EVENT_CLOSE:
    if (ending_len > 0) ending_take(conn);
    break;
  }
  // The event is ours to free (an accept carries the peer's address as a string).
  // The borrowed `rx` needs no drop: the bindings were generated with autodrop.
  sandport_handler_types_event_free(ev);
}
