//! Echo: every byte received is sent back, in order, on the same connection.
//!
//! The bytes stay in the host. Each event moves what fits (the send buffer's room) from
//! the receive buffer to the send buffer, inside the host (`mbuf.pipe-to`: they never
//! enter guest memory). When the client does not read its echo the send buffer fills, the rest waits
//! in the receive buffer, the host stops reading from the client, and the next `send`
//! event (the socket took some bytes; asked for only in that case, see `readConfig`)
//! resumes. So any amount passes through bounded buffers.
//!
//! When the client half-closes (`recv(0)`) bytes may still wait for room: the echo
//! remembers the connection and closes it (after sending) once the last of them is in
//! the send buffer, so the client reads its whole echo, then end-of-stream.
//!
//! Configuration (optional, under `[listener.config]`): `greeting`, a line sent on
//! accept; `fault-trigger`, bytes that make the echo trap when they arrive (to see the
//! host contain a fault).

const std = @import("std");
/// The C bindings of the WIT (plugins/c/bindings), which `zig translate-c` turns into
/// Zig at build time; plugin.c, compiled along, does the component model's lifting.
const c = @import("plugin");

/// A panic traps, without the default handler's formatting and stderr code (which
/// would need WASI). ReleaseSmall has no safety checks that could panic anyway.
pub const panic = std.debug.no_panic;

const Conn = u64;
const Mbuf = c.sandport_handler_host_borrow_mbuf_t;
const Error = c.sandport_handler_host_error_t;
const Event = c.sandport_handler_types_event_t;

/// libc's malloc: the bindings allocate what the host returns with it.
const gpa = std.heap.c_allocator;

/// Set up at the first event: the listener's configuration, read once since it cannot
/// change for the life of an instance, and when `send` events come.
var configured = false;
var greeting: ?[]u8 = null; // with its '\n'
var trigger: ?[]u8 = null;

/// Connections whose client half-closed while part of their echo waited for room.
var ending: std.ArrayList(Conn) = .empty;

fn logWarn(message: []const u8) void {
    var text = c.plugin_string_t{ .ptr = @constCast(message.ptr), .len = message.len };
    c.sandport_handler_host_log(c.SANDPORT_HANDLER_TYPES_LOG_LEVEL_WARN, &text);
}

/// The config's value for `key` followed by `suffix`, as a copy we own.
fn config(key: []const u8, comptime suffix: []const u8) ?[]u8 {
    var name = c.plugin_string_t{ .ptr = @constCast(key.ptr), .len = key.len };
    var value: c.plugin_string_t = undefined;
    if (!c.sandport_handler_host_config(&name, &value)) return null;
    defer c.plugin_string_free(&value);
    return std.mem.concat(gpa, u8, &.{ value.ptr[0..value.len], suffix }) catch @trap();
}

fn readConfig() void {
    greeting = config("greeting", "\n");
    trigger = config("fault-trigger", "");
    // A `send` event matters to an echo only when a full send buffer stopped it: ask
    // for those alone, instead of one after every write.
    c.sandport_handler_host_set_send_events(c.SANDPORT_HANDLER_TYPES_SEND_EVENTS_WHEN_BLOCKED);
    configured = true;
}

/// A refused call: `closed` only means the connection is going (its `close` event
/// follows), anything else is worth a line in the host's log. Either way the error may
/// hold a string the bindings allocated.
fn refused(err: *Error) void {
    if (err.tag != c.SANDPORT_HANDLER_TYPES_ERROR_CLOSED) logWarn("echo: the host refused a send");
    c.sandport_handler_host_error_free(err);
}

/// Moves as much as fits from the receive buffer to the send buffer, in one host call;
/// what does not fit waits there for the next `send` event.
fn pump(conn: Conn, rx: Mbuf) void {
    var err: Error = undefined;
    var moved: u32 = undefined;
    if (!c.sandport_handler_host_method_mbuf_pipe_to(rx, conn, std.math.maxInt(u32), &moved, &err)) refused(&err);
}

fn closeAfterSend(conn: Conn) void {
    const after_send = c.SANDPORT_HANDLER_TYPES_CLOSE_MODE_AFTER_SEND;
    var err: Error = undefined;
    if (!c.sandport_handler_host_close(conn, after_send, &err)) c.sandport_handler_host_error_free(&err);
}

/// Forgets `conn` if it was ending; returns whether it was.
fn endingTake(conn: Conn) bool {
    const i = std.mem.findScalar(Conn, ending.items, conn) orelse return false;
    _ = ending.swapRemove(i);
    return true;
}

/// The fault trigger, looked for only among the `n` bytes that just arrived (and the
/// few before them an occurrence could start in): the older bytes were looked at when
/// they arrived.
fn trapOnTrigger(rx: Mbuf, n: u32, bytes: []u8) void {
    var needle = c.plugin_list_u8_t{ .ptr = bytes.ptr, .len = bytes.len };
    const len = c.sandport_handler_host_method_mbuf_len(rx);
    const back = n + @as(u32, @intCast(bytes.len)) -| 1;
    var at: u32 = undefined;
    if (c.sandport_handler_host_method_mbuf_find(rx, &needle, len -| back, &at)) @trap();
}

/// Called by the bindings (plugin.c) for each event of a connection.
export fn exports_sandport_handler_handler_handle(conn: Conn, ev: *Event, rx: Mbuf) void {
    // The event is ours to free (an accept carries the peer's address as a string). The
    // borrowed `rx` needs no drop: the bindings were generated with autodrop.
    defer c.sandport_handler_types_event_free(ev);
    if (!configured) readConfig();
    switch (ev.tag) {
        c.SANDPORT_HANDLER_TYPES_EVENT_ACCEPT => if (greeting) |line| {
            var data = c.plugin_list_u8_t{ .ptr = line.ptr, .len = line.len };
            var room: u32 = undefined;
            var err: Error = undefined;
            if (!c.sandport_handler_host_send(conn, &data, &room, &err)) refused(&err);
        },
        c.SANDPORT_HANDLER_TYPES_EVENT_RECV => if (ev.val.recv > 0) {
            if (trigger) |bytes| trapOnTrigger(rx, ev.val.recv, bytes);
            pump(conn, rx);
        } else {
            pump(conn, rx);
            if (c.sandport_handler_host_method_mbuf_len(rx) == 0) {
                closeAfterSend(conn); // the client half-closed and has all its echo
            } else {
                ending.append(gpa, conn) catch @trap(); // the rest goes out at later `send` events
            }
        },
        c.SANDPORT_HANDLER_TYPES_EVENT_SEND => {
            // Waiting for room, yet the receive buffer may have been emptied meanwhile.
            if (c.sandport_handler_host_method_mbuf_len(rx) > 0) {
                pump(conn, rx);
                if (c.sandport_handler_host_method_mbuf_len(rx) > 0) return;
            }
            if (ending.items.len > 0 and endingTake(conn)) closeAfterSend(conn);
        },
        c.SANDPORT_HANDLER_TYPES_EVENT_CLOSE => _ = endingTake(conn),
        else => {},
    }
}
