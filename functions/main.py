"""Cloud Functions entry point (functions-framework): the SDK holds the code.

Deploy (see infra/README.md):
    gcloud functions deploy jobfleet-completion --gen2 --runtime=python311 \
        --source=functions --entry-point=on_job_written \
        --trigger-event-filters=type=google.cloud.firestore.document.v1.updated \
        --trigger-event-filters=database='(default)' \
        --trigger-event-filters-path-pattern=document='jobfleet_orchestrations/{o}/shards/{s}' \
        --retry

The trigger is on the shard counter documents, which only commits that end instances
update (at most about once a second per shard): one invocation per worker commit, not
per instance. `--retry` matters: a settle that fails (Firestore or Pub/Sub unavailable)
raises, and Eventarc delivers the event again until it succeeds. Without it, the
scheduled `jobfleet sweep` is what announces such an orchestration, up to a minute later.
"""

from jobfleet.cloud_function import on_job_written

__all__ = ["on_job_written"]
