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
    { for c in var.worker_classes : "${local.worker_job}-${c.name}" => c },
  )
  # Those on the deployment's image, and the classes that name an image of their own.
  deployment_worker_jobs = { for name, c in local.worker_jobs : name => c if c.image == null }
  own_image_worker_jobs  = { for name, c in local.worker_jobs : name => c if c.image != null }

  # What every process of the deployment reads (jobfleet/config.py, Settings.from_env).
  common_env = {
    JOBFLEET_BACKEND        = "gcp"
    GOOGLE_CLOUD_PROJECT    = var.project_id
    JOBFLEET_REGION         = var.region
    JOBFLEET_RETENTION_DAYS = tostring(var.retention_days)
  }
  # What the processes that start runs read: which job to run and where events go
  # (kick-offs, pipelines' next stages, the sweep's recoveries and announcements).
  launcher_env = merge(local.common_env, {
    JOBFLEET_CLOUD_RUN_JOB = local.worker_job
    JOBFLEET_TOPIC         = local.topic
  })
  webhook_env = var.webhook_secret_version == null ? {} : {
    JOBFLEET_WEBHOOK_SECRET = var.webhook_secret_version
  }

  worker_env     = local.common_env
  completion_env = merge(local.launcher_env, local.webhook_env)
  api_env = merge(local.launcher_env, local.webhook_env, {
    # Who may call it: ID tokens for its own URL, of the invokers and of the scheduler.
    JOBFLEET_API_AUDIENCE = local.api_url
    JOBFLEET_API_PRINCIPALS = join(",", concat(
      [for p in var.api_invokers : split(":", p)[1]],
      [google_service_account.role["scheduler"].email],
    ))
    # What the API's schedule changes tell Cloud Scheduler (backends/gcp/cloud_scheduler.py).
    JOBFLEET_API_URL                   = local.api_url
    JOBFLEET_SCHEDULER_SERVICE_ACCOUNT = google_service_account.role["scheduler"].email
  })

  # The secret of the webhook secret version, for a binding on that secret alone.
  webhook_secret = var.webhook_secret_version == null ? null : join("/", slice(split("/", var.webhook_secret_version), 0, 4))
}
