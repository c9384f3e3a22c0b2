"""Echo: every byte received is sent back, in order, with backpressure.

The bytes stay in the host: each event moves what fits from the receive buffer to the
send buffer, and what does not fit waits in the receive buffer (which pauses reading
from the client) until a `send` event says the socket took some. So any amount passes
through bounded buffers.

The echo migrates (world `migrating-plugin`): when the listener's plugin is swapped, or
the host replaces the instance with a fresh one, each open connection moves to the new
instance with what the echo knows of it (whether it waits for room, whether its client
half-closed), and the client notices nothing.
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
    CloseMode, Error_Closed, Event, Event_Accept, Event_Close, Event_Recv, Event_Send, LogLevel,
    SendEvents,
)

# As many bytes as `pipe-to` may move: all that fit.
ALL = 0xFFFF_FFFF
# The first byte of a handed-over connection: the layout of what follows (one byte of
# the flags below).
STATE_V1 = 1
WAITING = 1
ENDING = 2


class Echo:
    """The instance's state and behaviour.

    componentize-py creates one object of each exported interface's class (`Handler`,
    `Migrate`) when the component is built, so both reach this one object. It is made
    then too: `__init__` may not call the host, and the listener's config is read on
    first use (`cached_property`), once per instance.
    """

    def __init__(self) -> None:
        # Connections with bytes left in the receive buffer for lack of room: the next
        # `send` event moves them. Others need no work on `send`.
        self.waiting: set[int] = set()
        # Connections whose client half-closed: closed once their echo is all sent.
        self.ending: set[int] = set()
        # Whether this instance asked for `send` events only when the echo waits for
        # room (each is a call into Python), instead of one after every write.
        self.started = False

    @cached_property
    def greeting(self) -> bytes | None:
        text = host.config("greeting")
        return None if text is None else f"{text}\n".encode()

    @cached_property
    def trigger(self) -> bytes | None:
        # An empty trigger would match every buffer: treat it as none.
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
        # The trigger's exception must escape: an uncaught exception traps the
        # instance, which the host logs as a fault. `find` scans in the host.
        if isinstance(ev, Event_Recv) and self.trigger and rx.find(self.trigger, 0) is not None:
            raise RuntimeError("echo: fault trigger received")
        try:
            self.react(conn, ev, rx)
        except Err as e:
            warn_unless_closed(conn, e)

    def react(self, conn: int, ev: Event, rx: Mbuf) -> None:
        match ev:
            case Event_Recv(0):
                self.ending.add(conn)
                self.pump(conn, rx)
            case Event_Recv():
                self.pump(conn, rx)
            case Event_Send() if conn in self.waiting:
                self.pump(conn, rx)
            case Event_Accept() if self.greeting:
                host.send(conn, self.greeting)
            case Event_Close():
                self.waiting.discard(conn)
                self.ending.discard(conn)

    def pump(self, conn: int, rx: Mbuf) -> None:
        """Move bytes to the send buffer until it is full or the receive buffer empty."""
        if move(conn, rx):
            self.waiting.discard(conn)
            if conn in self.ending:
                host.close(conn, CloseMode.AFTER_SEND)
        else:
            self.waiting.add(conn)

    def hand_over(self, conn: int) -> bytes:
        """`conn`'s flags; reads only, so a migration called off leaves it as it was."""
        flags = (WAITING if conn in self.waiting else 0) | (ENDING if conn in self.ending else 0)
        return bytes([STATE_V1, flags])

    def take_over(self, conn: int, state: bytes) -> None:
        """Serve `conn` from `state`, and go on at once with what its receive buffer
        holds: bytes that arrived while it waited for room, or before the old instance
        saw them, would otherwise wait for an event that may never come.
        """
        self.start()
        try:
            if len(state) != 2 or state[0] != STATE_V1:
                host.log(LogLevel.WARN, f"echo {conn}: handed over with state this version cannot read")
                host.close(conn, CloseMode.AFTER_SEND)
                return
            # The pump below settles `waiting` anew from the buffers as they are.
            if state[1] & WAITING:
                self.waiting.add(conn)
            if state[1] & ENDING:
                self.ending.add(conn)
            with host.recv_buffer(conn) as rx:
                self.pump(conn, rx)
        except Err as e:
            warn_unless_closed(conn, e)


def warn_unless_closed(conn: int, e: Err) -> None:
    """A refused host call raises Err(error). `closed` only means the connection is
    going (its `close` event follows); anything else is worth a line.
    """
    if not isinstance(e.value, Error_Closed):
        host.log(LogLevel.WARN, f"echo {conn}: {e.value}")


def move(conn: int, rx: Mbuf) -> bool:
    """Move what fits to the send buffer, inside the host (the bytes never enter
    Python); True once `rx` is empty."""
    rx.pipe_to(conn, ALL)
    return rx.len() == 0


ECHO = Echo()


class Handler(exports.Handler):
    """The `handler` export: every event goes to the instance's `Echo`."""

    def handle(self, conn: int, ev: Event, rx: Mbuf) -> None:
        ECHO.handle(conn, ev, rx)


class Migrate(exports.Migrate):
    """The `migrate` export: moves the instance's connections to a new instance."""

    def hand_over_instance(self) -> bytes:
        # Nothing of the instance's own: the new one makes its own choice of `send`
        # events (`take_over_instance`) and reads the config again.
        return b""

    def take_over_instance(self, state: bytes) -> None:
        # The `send` events are chosen before the first event, as in `handle`.
        ECHO.start()

    def hand_over(self, conn: int) -> bytes:
        return ECHO.hand_over(conn)

    def take_over(self, conn: int, state: bytes) -> None:
        ECHO.take_over(conn, state)
