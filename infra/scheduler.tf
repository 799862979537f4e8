# The sweep: what brings back an orchestration a fault left behind. The same job that
# CloudSchedulerTimer.ensure_sweep (backends/gcp/cloud_scheduler.py) makes, so that
# `jobfleet schedules sync` and `terraform apply` agree on it (tests/infra/test_drift.py
# compares them): every minute, POST <api>/v1/sweep with the scheduler's OIDC token.
#
# Made on the first apply, paused until there is an API to call: the first build's
# `jobfleet schedules sync` (cloudbuild.yaml) runs ensure_sweep, which creates the job
# when it is missing, and a job Terraform then tried to create would already exist
# (409). ensure_sweep also resumes it; the apply with the image leaves it running.

resource "google_cloud_scheduler_job" "sweep" {
  project          = var.project_id
  region           = var.region
  name             = "jobfleet_sweep" # the code's SWEEP_JOB, which no schedule's job can be called
  description      = "jobfleet sweep: brings back what faults left behind"
  schedule         = "* * * * *"
  time_zone        = "UTC"
  attempt_deadline = "180s"
  paused           = !local.deployed

  retry_config {
    retry_count          = 5
    min_backoff_duration = "20s"
    max_backoff_duration = "300s"
    max_doublings        = 4
  }

  http_target {
    http_method = "POST"
    uri         = "${local.api_url}/v1/sweep"

    oidc_token {
      service_account_email = google_service_account.role["scheduler"].email
      audience              = local.api_url
    }
  }

  depends_on = [google_project_service.apis]
}
