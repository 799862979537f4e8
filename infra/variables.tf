variable "project_id" {
  description = "The Google Cloud project everything is created in."
  type        = string
}

variable "region" {
  description = "The one region of everything: Cloud Run, Firestore, Eventarc, Cloud Scheduler, Artifact Registry (the SDK's JOBFLEET_REGION)."
  type        = string
  default     = "us-central1"
}

variable "image" {
  description = "The deployment's image (<region>-docker.pkg.dev/<project>/<prefix>/jobs:<tag>). Null on the very first apply, which makes everything but the Cloud Run parts (the registry the first build pushes to among them); give the first image Cloud Build pushed to create them. Afterwards Cloud Build deploys new images and Terraform leaves them alone."
  type        = string
  default     = null
}

variable "prefix" {
  description = "The start of every resource name. The SDK's defaults (JOBFLEET_CLOUD_RUN_JOB=jobfleet-worker, JOBFLEET_TOPIC=jobfleet-job-completed) match \"jobfleet\"; another prefix is passed to them in the environment."
  type        = string
  default     = "jobfleet"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,20}$", var.prefix))
    error_message = "prefix: lower-case letters, digits and hyphens, starting with a letter, at most 21 characters (service account ids are at most 30)."
  }
}

variable "worker_cpu" {
  description = "CPUs of a base worker task (jobs that declare no Resources); the defaults are Resources()'s."
  type        = number
  default     = 1
}

variable "worker_memory" {
  description = "Memory of a base worker task."
  type        = string
  default     = "512Mi"
}

variable "worker_task_timeout_seconds" {
  description = "How long a base worker task may run: a task works through a whole shard of instances, so this bounds a shard, not one instance."
  type        = number
  default     = 3600
}

variable "worker_max_retries" {
  description = "How often Cloud Run restarts a failed base worker task."
  type        = number
  default     = 3
}

variable "worker_parallelism" {
  description = "How many tasks of one execution run at once (0: as many as Cloud Run allows). Kick-off sets the task count, and Cloud Run documents parallelism as at most the task count, so a limit above 0 may be refused for a kick-off of fewer tasks than it."
  type        = number
  default     = 0

  validation {
    condition     = var.worker_parallelism >= 0 && floor(var.worker_parallelism) == var.worker_parallelism
    error_message = "worker_parallelism: a whole number, 0 (no limit) or more."
  }
}

variable "worker_classes" {
  description = "The worker classes of the deployment's jobs, as `jobfleet worker-classes` writes them to worker_classes.auto.tfvars.json: one Cloud Run job <prefix>-worker-<name> each."
  type = list(object({
    name                 = string
    cpu                  = number
    memory               = string
    task_timeout_seconds = number
    max_retries          = number
    image                = optional(string)
    jobs                 = list(string)
  }))
  default = []
}

variable "api_invokers" {
  description = "The principals allowed to call the API, each named: \"user:someone@example.com\" or \"serviceAccount:ci@project.iam.gserviceaccount.com\" (the API checks the e-mail in their ID tokens, so groups and domains cannot be listed)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for p in var.api_invokers : can(regex("^(user|serviceAccount):[^@\\s]+@[^@\\s]+$", p))])
    error_message = "api_invokers: each one \"user:EMAIL\" or \"serviceAccount:EMAIL\"."
  }
}

variable "webhook_secret_version" {
  description = "The Secret Manager version holding the webhook signing secret (projects/P/secrets/S/versions/V), or null for no signed webhooks."
  type        = string
  default     = null

  validation {
    condition     = var.webhook_secret_version == null || can(regex("^projects/[^/]+/secrets/[^/]+/versions/[^/]+$", var.webhook_secret_version))
    error_message = "webhook_secret_version: projects/PROJECT/secrets/SECRET/versions/VERSION."
  }
}

variable "retention_days" {
  description = "How long finished orchestrations, fires, webhook deliveries and leases are kept before Firestore's TTL deletes them (JOBFLEET_RETENTION_DAYS; at least 8: a run may last 7 days)."
  type        = number
  default     = 30

  validation {
    condition     = var.retention_days >= 8
    error_message = "retention_days must be at least 8."
  }
}

variable "api_max_instances" {
  description = "The most instances of the API service."
  type        = number
  default     = 10
}

variable "completion_max_instances" {
  description = "The most instances of the completion service."
  type        = number
  default     = 20
}

variable "jobs_dir" {
  description = "The directory of the jobs package in its repository (cloudbuild.yaml's _JOBS_DIR), for the `gcloud builds submit` line of the outputs."
  type        = string
  default     = "."
}

variable "jobs_modules" {
  description = "The jobs modules the image imports (cloudbuild.yaml's _JOBS_MODULES, the image's JOBFLEET_JOBS), for the `gcloud builds submit` line of the outputs; null leaves cloudbuild.yaml's default."
  type        = string
  default     = null
}
