# acme_jobs on Google Cloud: the jobfleet module with this repository's worker classes
# (worker_classes.auto.tfvars.json, written by `jobfleet worker-classes`).
#
#   terraform init
#   terraform apply -var project_id=acme-prod -var image=us-central1-docker.pkg.dev/acme-prod/jobfleet/jobs:first
#
# The first image may be any that runs `jobfleet`; Cloud Build deploys the real ones.

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
  description = "The image of the first apply (Cloud Build replaces it)."
  type        = string
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
