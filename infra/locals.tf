# Names and values more than one file uses, from the variables: one place each.

data "google_project" "this" {
  project_id = var.project_id
}

locals {
  # The API's URL is Cloud Run's deterministic one, known before the service exists, so
  # the service can carry it as its own audience and the sweep job can point at it.
  api_url = "https://${var.prefix}-api-${data.google_project.this.number}.${var.region}.run.app"

  worker_job = "${var.prefix}-worker"
  topic      = "${var.prefix}-job-completed"

  # Every Cloud Run job and service that runs the deployment's image carries this label:
  # cloudbuild.yaml updates the image of all of them, and Terraform ignores their image.
  deployment_image_label = { "jobfleet-image" = "deployment" }

  # The worker jobs: the base one, and one per worker class (jobfleet.Resources).
  base_worker = {
    cpu                  = var.worker_cpu
    memory               = var.worker_memory
    task_timeout_seconds = var.worker_task_timeout_seconds
    max_retries          = var.worker_max_retries
    image                = null
  }
  worker_jobs = merge(
    { (local.worker_job) = local.base_worker },
    {
      for c in var.worker_classes : "${local.worker_job}-${c.name}" => {
        cpu                  = c.cpu
        memory               = c.memory
        task_timeout_seconds = c.task_timeout_seconds
        max_retries          = c.max_retries
        image                = c.image
      }
    },
  )
  # Those on the deployment's image, and the classes that name an image of their own.
  deployment_worker_jobs = { for name, c in local.worker_jobs : name => c if c.image == null }
  own_image_worker_jobs  = { for name, c in local.worker_jobs : name => c if c.image != null }

  # The environment of each role, name by name (tests/infra/test_drift.py checks each
  # name against the code that reads it). Every process reads the backend, project,
  # region and retention (jobfleet/config.py, Settings.from_env); those that start runs
  # also which job to run and where events go; those that deliver webhooks the secret
  # ("" for none); the API also who may call it and what its schedules tell Cloud
  # Scheduler (backends/gcp/cloud_scheduler.py).
  webhook_secret_setting = var.webhook_secret_version == null ? "" : var.webhook_secret_version
  worker_env = {
    JOBFLEET_BACKEND        = "gcp"
    GOOGLE_CLOUD_PROJECT    = var.project_id
    JOBFLEET_REGION         = var.region
    JOBFLEET_RETENTION_DAYS = tostring(var.retention_days)
  }
  completion_env = {
    JOBFLEET_BACKEND        = "gcp"
    GOOGLE_CLOUD_PROJECT    = var.project_id
    JOBFLEET_REGION         = var.region
    JOBFLEET_RETENTION_DAYS = tostring(var.retention_days)
    JOBFLEET_CLOUD_RUN_JOB  = local.worker_job
    JOBFLEET_TOPIC          = local.topic
    JOBFLEET_WEBHOOK_SECRET = local.webhook_secret_setting
  }
  api_env = {
    JOBFLEET_BACKEND                   = "gcp"
    GOOGLE_CLOUD_PROJECT               = var.project_id
    JOBFLEET_REGION                    = var.region
    JOBFLEET_RETENTION_DAYS            = tostring(var.retention_days)
    JOBFLEET_CLOUD_RUN_JOB             = local.worker_job
    JOBFLEET_TOPIC                     = local.topic
    JOBFLEET_WEBHOOK_SECRET            = local.webhook_secret_setting
    JOBFLEET_API_AUDIENCE              = local.api_url
    JOBFLEET_API_PRINCIPALS            = local.api_principals
    JOBFLEET_API_URL                   = local.api_url
    JOBFLEET_SCHEDULER_SERVICE_ACCOUNT = google_service_account.role["scheduler"].email
  }
  # The e-mails whose ID tokens the API accepts: the invokers' and the scheduler's.
  api_principals = join(",", concat(
    [for p in var.api_invokers : split(":", p)[1]],
    [google_service_account.role["scheduler"].email],
  ))

  # The secret of the webhook secret version, for a binding on that secret alone.
  webhook_secret = var.webhook_secret_version == null ? null : join("/", slice(split("/", var.webhook_secret_version), 0, 4))
}
