# acme_jobs on Google Cloud: the jobfleet module with this repository's worker classes
# (worker_classes.auto.tfvars.json, written by `jobfleet worker-classes`).
#
#   terraform init
#   terraform apply -var project_id=acme-prod          # everything but the Cloud Run parts
#   gcloud builds submit ...                              # `terraform output cloud_build_submit`
#   terraform apply -var project_id=acme-prod -var image=<the image that build pushed>
#
# After that, Cloud Build deploys new images; Terraform leaves them alone.

terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.0, < 8.0"
    }
  }
}

variable "project_id" {
  description = "The Google Cloud project to deploy to."
  type        = string
}

variable "region" {
  description = "The one region of the deployment."
  type        = string
  default     = "us-central1"
}

variable "image" {
  description = "The first image Cloud Build pushed (null on the very first apply)."
  type        = string
  default     = null
}

variable "api_invokers" {
  description = "Who may call the API: \"user:EMAIL\" or \"serviceAccount:EMAIL\"."
  type        = list(string)
  default     = []
}

variable "worker_classes" {
  description = "The worker classes of acme_jobs (worker_classes.auto.tfvars.json)."
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

provider "google" {
  project = var.project_id
  region  = var.region
}

module "jobfleet" {
  source = "../../../infra"

  project_id     = var.project_id
  region         = var.region
  image          = var.image
  api_invokers   = var.api_invokers
  worker_classes = var.worker_classes
  jobs_dir       = "examples/acme_jobs"
  jobs_modules   = "acme_jobs.jobs"
}

output "api_url" {
  value = module.jobfleet.api_url
}

output "client_exports" {
  value = module.jobfleet.client_exports
}

output "cloud_build_submit" {
  value = module.jobfleet.cloud_build_submit
}
