"""Signed webhooks: tenants' endpoints get each run's end as a Standard Webhooks
delivery (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``), retried with
backoff for a day and then listed for replay.

- ``targets``: which addresses an endpoint may reach (the SSRF guard), pure.
- ``signing``: secrets and signatures, by the ``standardwebhooks`` package.
- ``schedule``: when a failed delivery is tried again, pure.
- ``events``: a delivery's body, from the finished run, pure.
- ``outbox``: endpoints and deliveries in the store.
- ``delivery``: the worker that sends what is due.
"""
