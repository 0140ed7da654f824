"""The gunicorn worker the Procfile's `web` runs (`GroupCommitWorker`): gunicorn's sync
worker, storing the webhooks that arrive together in one commit (`gatehouse.webhooks.group`),
and closing a connection whose request was read whole at once (`PromptCloseWorker`).

Since benoitc/gunicorn#3590 (in the 27.0.1 we pin) the sync worker ends every connection with
`util.close_graceful`: it half-closes, then waits in `recv` until the client closes its end
too (at most 2 s or 64 KB), so that unread request bytes in the kernel's buffer cannot make
the close send a TCP reset, which can cut the answer off before the client has read it
(RFC 9112, 9.6). That wait is right when bytes are left unread (a body the view did not
read, a pipelined request). When none are, a plain close sends no reset, and the wait only
keeps the worker, which serves one connection at a time, idle until the client gets round to
closing: a sender that holds its end open after a `Connection: close` answer held a worker
for the full 2 s. Under load the wait also lasts as long as the client waits for a core,
which made the slowest answers slower (docs/benchmarks.md, "A worker that closes at once").

So `close_promptly` looks, without blocking, whether anything is waiting unread: if so it
hands the socket to gunicorn's own graceful close; otherwise it closes at once.
"""

from __future__ import annotations

import socket
from typing import Any

from gunicorn import util
from gunicorn.workers.sync import SyncWorker

from gatehouse.webhooks import group

_close_graceful = util.close_graceful


def close_promptly(sock: socket.socket) -> None:
    """Close a finished connection; linger (gunicorn's way) only over unread bytes."""
    try:
        sock.setblocking(False)  # a peek, never a wait (a timeout would poll first)
        waiting = sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        waiting = b""  # nothing sent beyond what was read
    except OSError:
        waiting = b""  # reset or gone already: nothing to protect
    except ValueError:
        waiting = b"?"  # a TLS socket takes no flags: gunicorn's way, unchanged
    if waiting:
        sock.setblocking(True)
        _close_graceful(sock)
        return
    # b"" from the peek is the client's own close: nothing unread either.
    try:
        sock.close()
    except OSError:
        pass


class PromptCloseWorker(SyncWorker):
    """gunicorn's sync worker with `close_promptly` as its connection close."""

    def init_process(self) -> None:
        # In the forked worker only, before its loop starts: the sync worker looks the
        # function up on `gunicorn.util` for every connection it ends.
        util.close_graceful = close_promptly
        super().init_process()


# What the first bytes of a webhook the fast path can park look like (`webhooks.fastpath`).
HOOK_POST = b"POST /hooks/"


def request_start(client: socket.socket, wait: bool) -> bytes | None:
    """The first bytes of the client's request, left unread; None if it has sent nothing yet
    (and `wait` is false). b"" for a closed or broken connection."""
    flags = socket.MSG_PEEK if wait else socket.MSG_PEEK | socket.MSG_DONTWAIT
    try:
        return client.recv(len(HOOK_POST), flags)
    except BlockingIOError:
        return None
    except OSError:
        return b""  # reset, or gone: the ordinary handling deals with it


def resume_all(slots: group.Slots, requests: list[Any]) -> None:
    """Resume each parked request (it answers and closes); every one of them, even if one
    raises, which the sync worker's `handle` does not let happen."""
    failed: BaseException | None = None
    for request in requests:
        try:
            slots.resume(request)
        except BaseException as exc:  # noqa: BLE001 - raised below, once all are answered
            failed = failed or exc
    if failed is not None:
        raise failed


class GroupCommitWorker(PromptCloseWorker):
    """`PromptCloseWorker`, storing the accepted webhooks that arrive together in one commit
    (`gatehouse.webhooks.group`).

    A connection whose request starts `POST /hooks/` is served by the sync worker's own
    `handle`, unchanged, in a greenlet (kept from one connection to the next: `Slots`); any
    other is served as the sync worker serves it (a TLS connection, whose bytes are
    encrypted, always is). When a request parks at its store, the connections already
    waiting in the listen queue with their request sent are started the same way, up to
    `GROUP_MAX` connections; then the group is stored and every parked request resumed, in
    the order it came.
    Connections that park nothing (reads, the admin, a rejected webhook, hello-world) are
    served to the end when started, as the sync worker serves them. One that has sent
    nothing yet ends the group and is served after it, so a slow client never holds a
    group's answers.
    """

    _slots: group.Slots | None = None

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        serve = super().handle
        head = request_start(client, wait=True)
        if head is None or not head.startswith(HOOK_POST):
            # Not a webhook: served as the sync worker serves it, without a greenlet.
            serve(listener, client, addr)
            return
        if self._slots is None:
            self._slots = group.Slots(serve)
        slots = self._slots
        late: tuple[socket.socket, Any] | None = None
        with group.collecting() as parked_in:
            first = slots.start(listener, client, addr)
            if first is None:
                return
            waiting = [first]
            taken = 1  # connections, parked or not: reads served meanwhile delay the group too
            try:
                while taken < group.GROUP_MAX:
                    try:
                        other, other_addr = listener.accept()
                    except OSError:
                        break  # none waiting (or gone before accepted): the run loop's concern
                    other.setblocking(True)
                    util.close_on_exec(other)
                    taken += 1
                    head = request_start(other, wait=False)
                    if head is None:
                        late = (other, other_addr)
                        break
                    if not head.startswith(HOOK_POST):
                        serve(listener, other, other_addr)
                        continue
                    started = slots.start(listener, other, other_addr)
                    if started is not None:
                        waiting.append(started)
            finally:
                parked_in.flush()
                try:
                    resume_all(slots, waiting)
                finally:
                    parked_in.enqueue()
        if late is not None:
            serve(listener, *late)


WORKER_CLASS = f"{__name__}.{GroupCommitWorker.__name__}"
# Web workers per host unless WEB_CONCURRENCY says otherwise: two, as measured best on a
# 2-core host that also runs the queue worker. On SQLite the web workers take turns at one
# write lock; on PostgreSQL a third one took the cores the queue worker needed
# (docs/benchmarks.md, "A worker that closes at once", 3). gunicorn.conf.py and the bench
# both read it.
WEB_WORKERS = 2
# Queue workers `make run` starts (and the benchmark runs beside the web): two. Since webhooks
# that arrive together share one commit, the web accepts about twice what it did, and at half
# of that rate one queue worker fell behind beside the web (lag p99 1.1 s on SQLite at 1,985
# posts/s, 2.1 s on PostgreSQL at 1,505/s); two keep up on both with batches of up to 150
# (lag p99 187 ms on SQLite at 1,982/s, 227 ms on PostgreSQL at 2,045/s: docs/benchmarks.md,
# "Cheaper events for the lag phase").
QUEUE_WORKERS = 2
