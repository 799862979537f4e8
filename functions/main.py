"""Cloud Functions entry point (functions-framework): the SDK holds the code.

Deploy (see infra/README.md):
    gcloud functions deploy jobfleet-completion --gen2 --runtime=python311 \
        --source=functions --entry-point=on_job_written \
        --trigger-event-filters=type=google.cloud.firestore.document.v1.written \
        --trigger-event-filters=database='(default)' \
        --trigger-event-filters-path-pattern=document='jobfleet_orchestrations/{o}/jobs/{j}'
"""

from jobfleet.cloud_function import on_job_written

__all__ = ["on_job_written"]
