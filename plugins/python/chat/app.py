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

The chat migrates (world `migrating-plugin`), as the Rust chat does: when the listener's
plugin is swapped, or the host replaces the instance with a fresh one, the room moves to
the new instance (its join order) and each member with its connection (its name, its
armed `/timer`s, which the new instance arms again for the time they had left). No one is
told that anyone left or joined; each member gets `* chat took over, you are still NAME`.
"""

# Python prints an uncaught exception's traceback with this module, and a component
# can import at run time only what was imported when it was built: without it a fault
# would reach the host's log as a bare trap.
import traceback  # noqa: F401
import json
import time
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
# What a migration carries is JSON behind this version byte: the next version can tell
# whether it can read it. The room is `{"roster": [NAME, ...]}` (its names in the order
# they joined), a member `{"name": NAME, "timers": {"ID": MILLIS_LEFT}, "lagging": BOOL}`.
STATE_V1 = b"\x01"


class Room:
    """The room: the instance's state and behaviour.

    componentize-py creates one object of each exported interface's class (`Handler`,
    `Migrate`) when the component is built, so both reach this one object. It is made
    then too: `__init__` may not call the host, and the config is read on first use.
    """

    def __init__(self) -> None:
        # Members by connection id, in the order they joined.
        self.names: dict[int, str] = {}
        # Each member's armed `/timer`s: id to when it is due (`now_ms`), which a
        # migration turns into the time left.
        self.timers: dict[int, dict[int, int]] = {}
        # The join order of a room taken over (name to place), until the first event
        # puts `names` in it: members are taken over in the host's order.
        self.places: dict[str, int] = {}
        # Whether this instance asked for the fewest `send` events: a member whose
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

    def start(self) -> None:
        """Ask for `when-blocked` send events, once: the choice is the instance's, so
        an instance that took over from another must ask again.
        """
        if not self.started:
            host.set_send_events(SendEvents.WHEN_BLOCKED)
            self.started = True

    def handle(self, conn: int, ev: Event, rx: Mbuf) -> None:
        self.start()
        if self.places:
            self.names = dict(self.in_join_order())
            self.places = {}
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
                    self.timers.get(conn, {}).pop(timer, None)
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
        self.timers.pop(conn, None)
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
                    self.timers.setdefault(conn, {})[timer] = now_ms() + millis
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
                self.timers.get(conn, {}).pop(timer, None)
                deliver(conn, f"* timer {timer} {'cancelled' if armed else 'not armed'}\n")
            case _:
                deliver(conn, "* usage: /cancel ID\n")

    def broadcast(self, sender: int, line: str | bytes) -> None:
        """Send `line` to every member but `sender`."""
        data = line.encode() if isinstance(line, str) else line
        for member in self.names:
            if member != sender:
                deliver(member, data)

    def in_join_order(self) -> list[tuple[int, str]]:
        """The members (id, name) in the order they joined, also in a room taken over
        that has not had an event since.
        """
        # Python's sort is stable: anyone missing from the roster keeps its place after
        # those in it.
        last = len(self.places)
        return sorted(self.names.items(), key=lambda member: self.places.get(member[1], last))

    def hand_over_instance(self) -> bytes:
        """The room's join order, by name: ids may differ in the next instance."""
        roster = [name for _, name in self.in_join_order()]
        return STATE_V1 + json.dumps({"roster": roster}).encode()

    def take_over_instance(self, state: bytes) -> None:
        """Start from the room `hand_over_instance` made; its members come one by one
        through `take_over`.
        """
        # The `send` events are chosen before the first event, as in `handle`.
        self.start()
        roster = read_state(state, {"roster": list}).get("roster")
        if roster is None or not all(isinstance(name, str) for name in roster):
            host.log(LogLevel.WARN, "chat: the room was handed over in a form this version cannot read")
            return
        self.places = {name: place for place, name in enumerate(roster)}

    def hand_over(self, conn: int) -> bytes:
        """`conn`'s member, without changing it: if the migration is called off, this
        instance serves it on. Its timers go as the time they have left (each instance
        has a clock of its own).
        """
        if (name := self.names.get(conn)) is None:
            return b""
        now = now_ms()
        timers = {str(timer): max(due - now, 0) for timer, due in self.timers.get(conn, {}).items()}
        member = {"name": name, "timers": timers, "lagging": conn in lagging}
        return STATE_V1 + json.dumps(member).encode()

    def take_over(self, conn: int, state: bytes) -> None:
        """Serve the member `hand_over` made: quietly for the others, with a notice for
        it; its timers armed again, and what it sent meanwhile read on the next turn.
        """
        self.start()
        member = read_state(state, {"name": str, "timers": dict, "lagging": bool})
        timers = timers_left(member.get("timers", {}))
        try:
            if len(member) != 3 or timers is None:
                host.log(LogLevel.WARN, f"chat: user{conn} was handed over in a form this version cannot read")
                deliver(conn, "* your session could not be carried over\n")
                host.close(conn, CloseMode.AFTER_SEND)
                return
            name = member["name"]
            self.names[conn] = name
            if member["lagging"]:
                lagging.add(conn)
            deliver(conn, f"* chat took over, you are still {name}\n")
            for timer, millis in timers.items():
                try:
                    host.set_timer(conn, timer, millis)
                    self.timers.setdefault(conn, {})[timer] = now_ms() + millis
                except Err as e:
                    # Say, a lower `max-timers` in the new listener.
                    deliver(conn, f"* timer {timer} lost: {describe(e.value)}\n")
            # Complete lines may wait in the receive buffer for the old instance's resume
            # timer, which the new one may not count on: without this they could wait
            # for the member's next `recv`.
            with host.recv_buffer(conn) as rx:
                if rx.len():
                    resume(conn)
        except Err as e:
            if not isinstance(e.value, Error_Closed):
                host.log(LogLevel.WARN, f"chat: user{conn}: {describe(e.value)}")


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


def now_ms() -> int:
    """This instance's monotonic clock, in milliseconds."""
    return time.monotonic_ns() // 1_000_000


def read_state(state: bytes, fields: dict[str, type]) -> dict:
    """The JSON object behind STATE_V1 in `state`, with those of `fields` that have
    their type; empty when it is not one.
    """
    if not state.startswith(STATE_V1):
        return {}
    try:
        value = json.loads(state[len(STATE_V1):])
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {key: value[key] for key, kind in fields.items() if isinstance(value.get(key), kind)}


def timers_left(timers: dict) -> dict[int, int] | None:
    """A handed-over member's timers (id to milliseconds left), or None when one is not
    a `/timer` id with a time.
    """
    left = {}
    for timer, millis in timers.items():
        if not (timer.isdigit() and 0 < int(timer) < RESUME_TIMER and type(millis) is int and millis >= 0):
            return None
        left[int(timer)] = millis
    return left


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


ROOM = Room()


class Handler(exports.Handler):
    """The `handler` export: every event goes to the instance's `Room`."""

    def handle(self, conn: int, ev: Event, rx: Mbuf) -> None:
        ROOM.handle(conn, ev, rx)


class Migrate(exports.Migrate):
    """The `migrate` export: moves the room and its members to a new instance."""

    def hand_over_instance(self) -> bytes:
        return ROOM.hand_over_instance()

    def take_over_instance(self, state: bytes) -> None:
        ROOM.take_over_instance(state)

    def hand_over(self, conn: int) -> bytes:
        return ROOM.hand_over(conn)

    def take_over(self, conn: int, state: bytes) -> None:
        ROOM.take_over(conn, state)
