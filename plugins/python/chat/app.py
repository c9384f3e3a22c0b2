"""Chat: a line-based chat room; every connection of the plugin instance is a member.

A member is called `user` and its connection id (`user7`). Lines end with `\\n` (a `\\r`
before it is dropped). A line that is not a command goes to every other member as
`NAME: LINE`. Commands:

    /timer ID MILLIS   arm (or re-arm) the member's timer ID; `* timer ID fired` follows
    /cancel ID         disarm it
    /quit              `* bye`, then the connection closes
    /drop              the connection closes at once

A member whose send buffer is full misses lines: the room never waits for a slow reader.
The full behaviour is in plugins/CONFORMANCE.md.
"""

# Python prints an uncaught exception's traceback with this module, and a component
# can import at run time only what was imported when it was built: without it a fault
# would reach the host's log as a bare trap.
import traceback  # noqa: F401
from functools import cached_property

# componentize-py 0.18 (pinned in plugins/toolchains.sh: 0.19 to 0.25 leak every byte
# a plugin passes to the host) keeps `Err` with the generated types; later ones apart.
try:
    from componentize_py_types import Err
except ImportError:
    from wit_world.types import Err
from wit_world import exports
from wit_world.imports import host
from wit_world.imports.host import Mbuf
from wit_world.imports.types import (
    CloseMode, Error, Error_Closed, Error_LimitExceeded, Event, Event_Accept, Event_Close,
    Event_Recv, Event_Timer, LogLevel, SendEvents,
)

# Longest line accepted, without its `\n`: what a member may make the room buffer.
MAX_LINE = 4096
# Bytes copied out of the receive buffer per event, at most (room for 16 longest lines).
# Copying all of a full one (1 MiB by default) on every event of a burst wastes time,
# and the small objects made in between fragment the heap until the instance grows
# past the listener's memory limit (64 MiB by default).
READ_CHUNK = 64 * 1024
# Lines delivered (one line to one member counts one) in one event, at most: a burst of
# short lines, or a big room, must not push an event past its CPU-time limit, which
# would fault the instance and so end the whole room. The rest waits in the receive
# buffer (the host stops reading the member meanwhile) for a timer that fires at once,
# on the loop's next turn. A delivery costs Python 4 to 8 us on a busy machine: 1024
# makes an event 5 to 10 ms, far below the default 100 ms limit.
DELIVERIES_PER_EVENT = 1024
# The id of that timer; `/timer` ids stay below it.
RESUME_TIMER = 2**64 - 1


class Handler(exports.Handler):
    """The room. One per plugin instance; componentize-py creates it when the component
    is built, so `__init__` may not call the host: the config is read on first use.
    """

    def __init__(self) -> None:
        # Members by connection id, in the order they joined.
        self.names: dict[int, str] = {}
        # Whether the first event asked for the fewest `send` events: a member whose
        # send buffer is full misses lines, nothing waits for room, and each event is a
        # call into Python.
        self.started = False

    @cached_property
    def motd(self) -> str | None:
        return host.config("motd")

    @cached_property
    def trigger(self) -> bytes | None:
        # An empty trigger would match every empty line: treat it as none.
        return (host.config("fault-trigger") or "").encode() or None

    def handle(self, conn: int, ev: Event, rx: Mbuf) -> None:
        if not self.started:
            host.set_send_events(SendEvents.WHEN_BLOCKED)
            self.started = True
        try:
            match ev:
                case Event_Recv(0):
                    # The member sent all it will; it leaves once its lines are out.
                    host.close(conn, CloseMode.AFTER_SEND)
                case Event_Recv():
                    self.read_lines(conn, rx)
                case Event_Timer(timer) if timer == RESUME_TIMER:
                    self.read_lines(conn, rx)
                case Event_Timer(timer):
                    deliver(conn, f"* timer {timer} fired\n")
                case Event_Accept():
                    self.join(conn)
                case Event_Close():
                    self.leave(conn)
        except Err as e:
            # A refusal of the member's own connection: `closed` only means it is going
            # (its `close` event follows). Other members' refusals are handled in
            # `deliver`, so one member cannot stop the room.
            if not isinstance(e.value, Error_Closed):
                host.log(LogLevel.WARN, f"chat: user{conn}: {e.value}")

    def join(self, conn: int) -> None:
        name = f"user{conn}"
        deliver(conn, f"* welcome {name}\n")
        if self.motd is not None:
            deliver(conn, f"* {self.motd}\n")
        self.broadcast(conn, f"* {name} joined\n")
        self.names[conn] = name

    def leave(self, conn: int) -> None:
        lagging.discard(conn)
        if (name := self.names.pop(conn, None)) is not None:
            self.broadcast(conn, f"* {name} left\n")

    def read_lines(self, conn: int, rx: Mbuf) -> None:
        """Handle the complete lines in order, up to DELIVERIES_PER_EVENT or READ_CHUNK
        bytes; a partial one stays buffered until the rest arrives, and the RESUME_TIMER
        brings the rest. One copy per event, split here, costs fewer host calls than a
        `find` and a `read` per line.
        """
        data = rx.read(0, READ_CHUNK)
        start = deliveries = 0
        # A `\n` within MAX_LINE bytes of the line's start, or the line is too long.
        while (end := data.find(b"\n", start, start + MAX_LINE + 1)) != -1:
            if deliveries >= DELIVERIES_PER_EVENT:
                break
            line = data[start:end].removesuffix(b"\r")
            start = end + 1
            deliveries += len(self.names) or 1
            if not self.on_line(conn, line):
                return
        host.remove(conn, start)
        if end != -1 or (start and len(data) == READ_CHUNK):
            # The budget is spent, or more may be buffered than was read.
            resume(conn)
        elif len(data) - start > MAX_LINE:
            deliver(conn, "* line too long\n")
            host.close(conn, CloseMode.AFTER_SEND)

    def on_line(self, conn: int, line: bytes) -> bool:
        """A command or a message; False when the member is gone and its remaining
        lines are to be ignored.
        """
        if line == self.trigger:
            # Uncaught, it traps the instance: the host logs a fault.
            raise RuntimeError("chat: fault trigger received")
        command, _, arg = line.partition(b" ")
        match command:
            case b"/timer":
                self.arm(conn, arg)
            case b"/cancel":
                self.cancel(conn, arg)
            case b"/quit":
                deliver(conn, "* bye\n")
                host.close(conn, CloseMode.AFTER_SEND)
                return False
            case b"/drop":
                host.close(conn, CloseMode.NOW)
                return False
            case _:
                self.broadcast(conn, f"{self.names[conn]}: ".encode() + line + b"\n")
        return True

    def arm(self, conn: int, arg: bytes) -> None:
        match numbers(arg, 2):
            case [timer, millis]:
                try:
                    host.set_timer(conn, timer, millis)
                    deliver(conn, f"* timer {timer} armed\n")
                except Err as e:
                    # Say, more timers than the listener's `max-timers`.
                    deliver(conn, f"* timer {timer} refused: {describe(e.value)}\n")
            case _:
                deliver(conn, "* usage: /timer ID MILLIS\n")

    def cancel(self, conn: int, arg: bytes) -> None:
        match numbers(arg, 1):
            case [timer]:
                armed = host.cancel_timer(conn, timer)
                deliver(conn, f"* timer {timer} {'cancelled' if armed else 'not armed'}\n")
            case _:
                deliver(conn, "* usage: /cancel ID\n")

    def broadcast(self, sender: int, line: str | bytes) -> None:
        """Send `line` to every member but `sender`."""
        data = line.encode() if isinstance(line, str) else line
        for member in self.names:
            if member != sender:
                deliver(member, data)


# Members missing lines since their last delivered one. Said once per lapse, not per
# line: in a burst a log line per dropped line would cost as much as the deliveries.
lagging: set[int] = set()


def deliver(to: int, line: str | bytes) -> None:
    """Send `line` to `to`, or drop it: a full send buffer means a member that is not
    reading, and the room must not stall for it.
    """
    try:
        host.send(to, line.encode() if isinstance(line, str) else line)
        lagging.discard(to)
    except Err as e:
        match e.value:
            case Error_Closed():
                pass  # Its `close` event follows soon.
            case Error_LimitExceeded():
                if to not in lagging:
                    lagging.add(to)
                    host.log(LogLevel.WARN, f"chat: user{to} is not reading; dropping lines for it")
            case error:
                host.log(LogLevel.WARN, f"chat: send to user{to} failed: {describe(error)}")


def resume(conn: int) -> None:
    """Have the RESUME_TIMER go on with `conn`'s lines on the loop's next turn."""
    try:
        host.set_timer(conn, RESUME_TIMER, 0)
    except Err as e:
        # Say, `max-timers` of its own armed: the rest waits for its next `recv`.
        if not isinstance(e.value, Error_Closed):
            host.log(LogLevel.WARN, f"chat: cannot resume reading user{conn}: {describe(e.value)}")


def numbers(arg: bytes, count: int) -> list[int] | None:
    """Exactly `count` space-separated decimal numbers, each at least 1 and below
    RESUME_TIMER (so never one of the chat's own timer ids), or None.
    """
    words = arg.split(b" ")
    if len(words) != count or not all(word.isdigit() for word in words):
        return None
    values = [int(word) for word in words]
    return values if all(0 < value < RESUME_TIMER for value in values) else None


def describe(error: Error) -> str:
    """A refusal as the WIT names it: `limit-exceeded`, `invalid: ...`."""
    kind = type(error).__name__.removeprefix("Error_")
    name = "".join("-" + c.lower() if c.isupper() else c for c in kind).lstrip("-")
    value = getattr(error, "value", None)
    return name if value is None else f"{name}: {value}"
