"""The path a committed event takes through one instance, as explicit steps in order.

After the commit (the request's task, before its 2xx):

1. the rating service updates its summary cache (read-your-writes: a read after the write
   sees it); then the steps of :func:`after_commit_steps`:
2. the delivery timer notes the commit (the ``commit`` stage ends here);
3. the other workers of this host are told (``serve --workers``, in-process broker): they fan
   out on the other cores while this one does;
4. the relay takes it: on the in-process broker it is handed to this instance's hub at the
   end of the loop pass (:meth:`Delivery.deliver_batch`), in a cluster it goes to the broker.

From the broker (a cluster), every event any instance committed arrives at
:meth:`Delivery.on_broker_event`: it is delivered here and moves the relay's cursor.

Delivering a batch: the hub writes it to every subscriber, the webhook deliverer and the
durable consumers are woken, and each event's stage times are recorded (and the summary cache
learns the game moved); then the summary streams mark the games the batch moved (their timers
do the rest, off this path).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from ratewire.broker.base import EventHandler
from ratewire.broker.siblings import SiblingNotices
from ratewire.domain import RatingEvent
from ratewire.observability.latency import DeliveryTimer
from ratewire.observability.metrics import Metrics
from ratewire.realtime.hub import Hub
from ratewire.realtime.session import CLOSE_AUTH_FAILED, CLOSE_GOING_AWAY, Session
from ratewire.security.revocation import REVOKED_REASON, Revocation
from ratewire.security.tokens import TokenService
from ratewire.services.consumers import ConsumerService
from ratewire.services.relay import Relay
from ratewire.services.summaries import SummaryCache
from ratewire.services.summary_streams import SummaryStreams
from ratewire.webhooks.deliverer import WebhookDeliverer


def after_commit_steps(
    timer: DeliveryTimer, siblings: SiblingNotices | None, relay: Relay
) -> tuple[EventHandler, ...]:
    """What runs, in this order, right after each commit (see the module's docstring)."""
    steps: list[EventHandler] = [timer.committed]
    if siblings is not None:
        steps.append(siblings.announce)
    steps.append(relay.notify)
    return tuple(steps)


class Delivery:
    """This instance's side of every event: fan-out, webhooks, timing; and the sessions'
    closes that follow from the cluster (revocations, a history reset)."""

    def __init__(
        self,
        hub: Hub,
        sessions: set[Session],
        tokens: TokenService,
        timer: DeliveryTimer,
        metrics: Metrics,
        cache: SummaryCache | None,
        webhooks: WebhookDeliverer | None,
        summaries: SummaryStreams | None = None,
    ) -> None:
        self._hub = hub
        self._sessions = sessions
        self._tokens = tokens
        self._timer = timer
        self._metrics = metrics
        self._cache = cache
        self._webhooks = webhooks
        self._summaries = summaries
        #: The relay whose cursor the broker's deliveries move (None: this instance has no
        #: store to relay from). Set once the relay exists: the relay hands its batches here.
        self.relay: Relay | None = None
        #: The durable consumers woken by each batch (None: no database here to keep them).
        self.consumers: ConsumerService | None = None

    def deliver_batch(self, events: Sequence[RatingEvent]) -> None:
        """Fan ``events`` out to this instance's subscribers (the hot path)."""
        reached_hub = time.time()
        hub = self._hub
        hub.publish_batch(events)
        if self._webhooks is not None:
            self._webhooks.notify()
        if self.consumers is not None:
            self.consumers.notify()  # O(1): the consumers' own task reads the events
        timer, metrics, cache = self._timer, self._metrics, self._cache
        for event in events:
            timer.delivered(
                event, reached_hub, hub.encoded_at, hub.first_write_at, hub.last_write_at
            )
            metrics.observe_delivery(event.occurred_at.timestamp())
            if cache is not None:
                cache.saw(event.game_id, event.game_offset)
        if self._summaries is not None:
            # After the cache saw them: a summary stream's read then never finds them stale.
            self._summaries.moved(events)

    def on_broker_event(self, event: RatingEvent) -> None:
        """An event from the cluster's stream (any instance committed it)."""
        self.deliver_batch((event,))
        if self.relay is not None:
            self.relay.advance(event.seq)

    def ask_everyone_to_resume(self) -> None:
        """The stream's history was reset: every client resumes (and learns the gap)."""
        for session in list(self._sessions):
            session.close(CLOSE_GOING_AWAY, "Resume with since")

    def close_revoked(self, revocation: Revocation) -> None:
        """Close every connection whose token ``revocation`` revokes (4001)."""
        deny = self._tokens.deny_list
        for session in list(self._sessions):
            principal = session.principal
            if principal is not None and deny.revokes(
                revocation, principal.sub, principal.jti, principal.issued_at
            ):
                session.close(CLOSE_AUTH_FAILED, REVOKED_REASON)
