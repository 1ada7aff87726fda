"""One framework for the console's long jobs (lore ingestion, training, evaluation,
provisioning), in the spirit of NetBox's Job + JobRunner:

- `console.jobs.models`: the abstract `Job` row (status, progress, log, error, who and when,
  heartbeat) with the one `JobStatus` enum and `JOB_ENDED`; each kind's table inherits it and
  keeps its own fields.
- `console.jobs.services`: `job_log` (the one log writer: a single UPDATE that appends),
  `job_claim` (the one claim: a conditional UPDATE), `job_run` (brackets one execution and
  maps an exception to a failed row) and `job_enqueue` (a task sent once the transaction commits).
- `console.jobs.admin`: `JobAdminMixin`, the status view and htmx fragment every kind's page
  polls (`templates/admin/jobs/_status.html`).

This is the bottom layer: it knows no job kind, and imports nothing of training, memory,
inference or bridge.

Every job is sent by its kind's `*_start` service through `job_enqueue` (Celery's
`delay_on_commit`): a worker that took the message before the commit would find no row. The
recovery sweeps and the provisioning pokes send at once: they run in no transaction.
"""
