"""One instance on every core (``server.workers``, design section 14): the supervisor's
``WorkerSet`` (``supervisor``), the worker process (``worker``), their line (``channel``),
the connections a worker passes to the supervisor (``relay``) and the counts it reports
(``stats``)."""
