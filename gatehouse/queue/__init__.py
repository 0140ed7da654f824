"""The only package that talks to RQ: enqueue after commit, retry policy, sweep, worker."""

from gatehouse.queue.enqueue import PROCESS_EVENT, enqueue_events, get_queue, retry_policy

__all__ = ["PROCESS_EVENT", "enqueue_events", "get_queue", "retry_policy"]
