# What Cloud Build needs: the image repository, and a bucket for the sources that
# `gcloud builds submit --gcs-source-staging-dir` uploads, so that the deployer account
# reads that bucket alone rather than every bucket in the project.

resource "google_artifact_registry_repository" "images" {
  #checkov:skip=CKV_GCP_84:Google-managed encryption keys; a customer-managed key is a choice for the project's owner, not a default of this module.
  project       = var.project_id
  location      = var.region
  repository_id = var.prefix
  format        = "DOCKER"
  description   = "jobfleet deployment images (<region>-docker.pkg.dev/<project>/${var.prefix}/jobs:<build id>)"

  depends_on = [google_project_service.apis]
}

resource "google_artifact_registry_repository_iam_member" "deployer_writer" {
  project    = var.project_id
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.writer"
  member     = google_service_account.role["deployer"].member
}

resource "google_storage_bucket" "build_sources" {
  #checkov:skip=CKV_GCP_62:Uploaded build sources are transient (deleted after 7 days); access logs of them would outlive them.
  name                        = "${var.project_id}-${var.prefix}-build-sources"
  project                     = var.project_id
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      age = 7
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 1
    }
    action {
      type = "Delete"
    }
  }
}

resource "google_storage_bucket_iam_member" "deployer_sources" {
  bucket = google_storage_bucket.build_sources.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.role["deployer"].member
}
