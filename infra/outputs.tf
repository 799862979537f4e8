output "api_url" {
  description = "The API's URL (JOBFLEET_API_URL for clients, and the audience of their ID tokens)."
  value       = local.api_url
}

output "client_exports" {
  description = "What a client (a laptop, CI) exports to kick off and follow runs of this deployment."
  value = join("\n", [for name, value in {
    JOBFLEET_BACKEND       = "gcp"
    GOOGLE_CLOUD_PROJECT   = var.project_id
    JOBFLEET_REGION        = var.region
    JOBFLEET_CLOUD_RUN_JOB = local.worker_job
    JOBFLEET_TOPIC         = local.topic
    JOBFLEET_API_URL       = local.api_url
  } : "export ${name}=${value}"])
}

output "cloud_build_submit" {
  description = "The command that builds the image from the jobs repository and deploys it (cloudbuild.yaml, which runs as the deployer account), run from that repository's root."
  value = join(" ", [
    "gcloud builds submit --project=${var.project_id} --region=${var.region}",
    "--config=cloudbuild.yaml",
    "--gcs-source-staging-dir=gs://${google_storage_bucket.build_sources.name}/source",
    "--substitutions=_REGION=${var.region},_PREFIX=${var.prefix},_JOBS_DIR=${var.jobs_dir}${var.jobs_modules == null ? "" : ",_JOBS_MODULES=${var.jobs_modules}"}",
  ])
}

output "service_accounts" {
  description = "The e-mail of each role's service account."
  value       = { for role, account in google_service_account.role : role => account.email }
}

output "image_repository" {
  description = "Where Cloud Build pushes the deployment's images."
  value       = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"
}
