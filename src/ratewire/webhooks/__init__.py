"""Outbound webhooks: signed POSTs of every event of a webhook's topics, in order, retried on
a schedule, one instance at a time (``deliverer``), to URLs checked against server-side
request forgery (``addresses``)."""
