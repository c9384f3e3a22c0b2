//! Chat: a line-based chat room; every connection of the plugin instance is a member.
//!
//! A member is named `user` and its connection id (`user7`). A newcomer gets
//! `* welcome NAME` (and `* MOTD` when the listener's config has `motd`), the others
//! `* NAME joined`. Each line a member sends goes to every other member as `NAME: LINE`;
//! a member that leaves makes the others read `* NAME left`. Commands:
//!
//!   /timer ID MILLIS   arm (or re-arm) timer ID: `* timer ID armed`, then `* timer ID fired`
//!   /cancel ID         `* timer ID cancelled`, or `* timer ID not armed`
//!   /quit              `* bye`, then end-of-stream
//!   /drop              the connection closes at once
//!
//! Lines end with `\n`; a `\r` before it is dropped. The bytes of a line stay in the
//! host's receive buffer until its `\n` arrives; a line longer than 4096 bytes gets
//! `* line too long` and the connection closes. A member too slow to take a line misses
//! it rather than holding up the room. A burst of lines is handled a slice per event
//! (see `deliveries_per_event`). The config's `fault-trigger`, sent as a line,
//! makes the chat trap (to see the host contain a fault).

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

/// Longest line accepted, without its `\n`.
const max_line = 4096;

/// The id of the timer that resumes reading a member's lines where an event stopped;
/// `/timer` ids stay below it.
const resume_timer = std.math.maxInt(u64);

/// Lines delivered (one line to one member counts one) in one event, at most: a burst
/// of short lines, or a big room, must not push an event past its CPU-time limit, which
/// would fault the instance and so end the whole room. The rest waits in the receive
/// buffer (the host stops reading the member meanwhile) for a timer that fires at once,
/// on the loop's next turn. 4096 take under 10 ms of CPU time here, a tenth of the
/// default limit (100 ms), leaving room for a slower machine.
const deliveries_per_event = 4096;

/// libc's malloc: the bindings allocate what the host returns with it.
const gpa = std.heap.c_allocator;

/// The listener's configuration, read at the first event: it cannot change for the
/// life of an instance.
var configured = false;
var motd: ?[]u8 = null; // the whole line: `* MOTD\n`
var trigger: ?[]u8 = null;

/// The members, in the order they joined. A room is small: a plain list will do.
var members: std.ArrayList(Conn) = .empty;

/// Room for the longest line the chat sends: a relayed one, `userID: ` + LINE + `\n`.
var text: [max_line + 64]u8 = undefined;

/// Formats a line into `text`. Nothing we format can outgrow it.
fn format(comptime fmt: []const u8, args: anytype) []const u8 {
    return std.fmt.bufPrint(&text, fmt, args) catch unreachable;
}

fn logWarn(comptime fmt: []const u8, args: anytype) void {
    // Not in `text`: it is called while `text` is being sent.
    var line: [128]u8 = undefined;
    const message = std.fmt.bufPrint(&line, fmt, args) catch return;
    var string = c.plugin_string_t{ .ptr = message.ptr, .len = message.len };
    c.sandport_handler_host_log(c.SANDPORT_HANDLER_TYPES_LOG_LEVEL_WARN, &string);
}

/// What a refused call means, for the member who asked.
fn reason(err: *const Error) []const u8 {
    return switch (err.tag) {
        c.SANDPORT_HANDLER_TYPES_ERROR_CLOSED => "connection closed",
        c.SANDPORT_HANDLER_TYPES_ERROR_LIMIT_EXCEEDED => "listener limit exceeded",
        c.SANDPORT_HANDLER_TYPES_ERROR_NOT_ALLOWED => "not allowed",
        c.SANDPORT_HANDLER_TYPES_ERROR_INVALID => "invalid argument",
        else => "network failure",
    };
}

/// Sends `bytes` to `to`, or gives up on it: a full send buffer means a member that is
/// not reading, and the room must not wait for it.
fn deliver(to: Conn, bytes: []const u8) void {
    var data = c.plugin_list_u8_t{ .ptr = @constCast(bytes.ptr), .len = bytes.len };
    var room: u32 = undefined;
    var err: Error = undefined;
    if (c.sandport_handler_host_send(to, &data, &room, &err)) return;
    // `closed`: the member is going, its `close` event follows.
    switch (err.tag) {
        c.SANDPORT_HANDLER_TYPES_ERROR_CLOSED => {},
        c.SANDPORT_HANDLER_TYPES_ERROR_LIMIT_EXCEEDED => {
            logWarn("chat: user{d} is not reading; it misses a line", .{to});
        },
        else => logWarn("chat: user{d}: a send failed: {s}", .{ to, reason(&err) }),
    }
    c.sandport_handler_host_error_free(&err); // may hold a string the bindings allocated
}

/// Sends `bytes` to every member but `except`.
fn broadcast(except: Conn, bytes: []const u8) void {
    for (members.items) |to| {
        if (to != except) deliver(to, bytes);
    }
}

fn close(conn: Conn, mode: c.sandport_handler_types_close_mode_t) void {
    var err: Error = undefined;
    if (!c.sandport_handler_host_close(conn, mode, &err)) c.sandport_handler_host_error_free(&err);
}

/// The config's value for `key`, as a copy we own.
fn config(comptime prefix: []const u8, key: []const u8, comptime suffix: []const u8) ?[]u8 {
    var name = c.plugin_string_t{ .ptr = @constCast(key.ptr), .len = key.len };
    var value: c.plugin_string_t = undefined;
    if (!c.sandport_handler_host_config(&name, &value)) return null;
    defer c.plugin_string_free(&value);
    return std.mem.concat(gpa, u8, &.{ prefix, value.ptr[0..value.len], suffix }) catch @trap();
}

fn readConfig() void {
    motd = config("* ", "motd", "\n");
    trigger = config("", "fault-trigger", "");
    // A member whose send buffer is full misses lines; nothing waits for room, so no
    // `send` event is of use: ask for the fewest there are.
    c.sandport_handler_host_set_send_events(c.SANDPORT_HANDLER_TYPES_SEND_EVENTS_WHEN_BLOCKED);
    configured = true;
}

fn join(conn: Conn) void {
    deliver(conn, format("* welcome user{d}\n", .{conn}));
    if (motd) |line| deliver(conn, line);
    broadcast(conn, format("* user{d} joined\n", .{conn}));
    members.append(gpa, conn) catch @trap();
}

fn leave(conn: Conn) void {
    const i = std.mem.findScalar(Conn, members.items, conn) orelse return;
    _ = members.orderedRemove(i);
    broadcast(conn, format("* user{d} left\n", .{conn}));
}

/// A decimal number of at least 1 and below `resume_timer` (so, as a `/timer` id, never
/// the chat's own), and nothing else (no sign, no `_`, which `parseUnsigned` would take).
fn parsePositive(digits: []const u8) ?u64 {
    for (digits) |ch| if (!std.ascii.isDigit(ch)) return null;
    const n = std.fmt.parseUnsigned(u64, digits, 10) catch return null;
    return if (n > 0 and n < resume_timer) n else null;
}

/// `/timer ID MILLIS` from `conn`; `arg` is what follows `/timer `.
fn timerCommand(conn: Conn, arg: []const u8) void {
    const usage = "* usage: /timer ID MILLIS\n";
    const id_text, const millis_text = std.mem.cutScalar(u8, arg, ' ') orelse return deliver(conn, usage);
    const id = parsePositive(id_text) orelse return deliver(conn, usage);
    const millis = parsePositive(millis_text) orelse return deliver(conn, usage);
    var err: Error = undefined;
    if (c.sandport_handler_host_set_timer(conn, id, millis, &err)) {
        deliver(conn, format("* timer {d} armed\n", .{id}));
    } else {
        deliver(conn, format("* timer {d}: {s}\n", .{ id, reason(&err) }));
        c.sandport_handler_host_error_free(&err);
    }
}

/// `/cancel ID` from `conn`.
fn cancelCommand(conn: Conn, arg: []const u8) void {
    const id = parsePositive(arg) orelse return deliver(conn, "* usage: /cancel ID\n");
    var armed: bool = undefined;
    var err: Error = undefined;
    if (c.sandport_handler_host_cancel_timer(conn, id, &armed, &err)) {
        const what = if (armed) "cancelled" else "not armed";
        deliver(conn, format("* timer {d} {s}\n", .{ id, what }));
    } else {
        deliver(conn, format("* timer {d}: {s}\n", .{ id, reason(&err) }));
        c.sandport_handler_host_error_free(&err);
    }
}

/// A complete line from `conn`, without its line ending. Returns whether to go on with
/// the next one (not after the member asked to leave).
fn onLine(conn: Conn, line: []const u8) bool {
    if (trigger) |t| if (std.mem.eql(u8, line, t)) @trap();
    // A command is the first word; its argument, the rest after one space.
    const word, const arg = std.mem.cutScalar(u8, line, ' ') orelse .{ line, "" };
    if (std.mem.eql(u8, word, "/quit")) {
        deliver(conn, "* bye\n");
        close(conn, c.SANDPORT_HANDLER_TYPES_CLOSE_MODE_AFTER_SEND);
        return false;
    } else if (std.mem.eql(u8, word, "/drop")) {
        close(conn, c.SANDPORT_HANDLER_TYPES_CLOSE_MODE_NOW);
        return false;
    } else if (std.mem.eql(u8, word, "/timer")) {
        timerCommand(conn, arg);
    } else if (std.mem.eql(u8, word, "/cancel")) {
        cancelCommand(conn, arg);
    } else {
        broadcast(conn, format("user{d}: {s}\n", .{ conn, line }));
    }
    return true;
}

/// Handles the complete lines in the receive buffer, in order, up to
/// `deliveries_per_event`; the `resume_timer` brings the rest. The bytes of an
/// incomplete line stay in the buffer (the host's memory, not ours) for the next time.
fn readLines(conn: Conn, rx: Mbuf) void {
    var newline = c.plugin_list_u8_t{ .ptr = @constCast("\n"), .len = 1 };
    var deliveries: usize = 0;
    while (true) {
        if (deliveries >= deliveries_per_event) {
            var err: Error = undefined;
            if (!c.sandport_handler_host_set_timer(conn, resume_timer, 0, &err)) {
                logWarn("chat: user{d}: cannot resume reading its lines: {s}", .{ conn, reason(&err) });
                c.sandport_handler_host_error_free(&err);
            }
            return;
        }
        var at: u32 = undefined;
        const found = c.sandport_handler_host_method_mbuf_find(rx, &newline, 0, &at);
        const line_len = if (found) at else c.sandport_handler_host_method_mbuf_len(rx);
        if (line_len > max_line) {
            deliver(conn, "* line too long\n");
            close(conn, c.SANDPORT_HANDLER_TYPES_CLOSE_MODE_AFTER_SEND);
            return;
        }
        if (!found) return;
        var bytes: c.plugin_list_u8_t = undefined;
        c.sandport_handler_host_method_mbuf_read(rx, 0, at, &bytes);
        defer c.plugin_list_u8_free(&bytes);
        var err: Error = undefined;
        if (!c.sandport_handler_host_remove(conn, at + 1, &err)) {
            c.sandport_handler_host_error_free(&err); // the connection is closing
            return;
        }
        const line = bytes.ptr[0..bytes.len];
        const end = if (std.mem.endsWith(u8, line, "\r")) line.len - 1 else line.len;
        deliveries += @max(members.items.len, 1);
        if (!onLine(conn, line[0..end])) return;
    }
}

/// Called by the bindings (plugin.c) for each event of a connection.
export fn exports_sandport_handler_handler_handle(conn: Conn, ev: *Event, rx: Mbuf) void {
    // The event is ours to free (an accept carries the peer's address as a string). The
    // borrowed `rx` needs no drop: the bindings were generated with autodrop.
    defer c.sandport_handler_types_event_free(ev);
    if (!configured) readConfig();
    switch (ev.tag) {
        c.SANDPORT_HANDLER_TYPES_EVENT_ACCEPT => join(conn),
        c.SANDPORT_HANDLER_TYPES_EVENT_RECV => if (ev.val.recv > 0) {
            readLines(conn, rx);
        } else {
            close(conn, c.SANDPORT_HANDLER_TYPES_CLOSE_MODE_AFTER_SEND); // the member hung up
        },
        c.SANDPORT_HANDLER_TYPES_EVENT_TIMER => if (ev.val.timer == resume_timer) {
            readLines(conn, rx);
        } else {
            deliver(conn, format("* timer {d} fired\n", .{ev.val.timer}));
        },
        c.SANDPORT_HANDLER_TYPES_EVENT_CLOSE => leave(conn),
        else => {},
    }
}
