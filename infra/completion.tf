# The completion detector: the deployment's image running `jobfleet function` (the
# functions framework serving jobfleet.cloud_function) as a Cloud Run service, invoked
# by an Eventarc trigger on updates of the shard counter documents. A settle that fails
# raises, and the trigger delivers the update again: Eventarc retries Cloud Run
# destinations by default (10 s to 600 s backoff, for 24 hours); its retry_policy can
# only turn that off (max_attempts = 1), so the trigger sets none. The sweep is the
# backstop past that.

resource "google_cloud_run_v2_service" "completion" {
  project             = var.project_id
  name                = "${var.prefix}-completion"
  location            = var.region
  labels              = local.deployment_image_label
  ingress             = "INGRESS_TRAFFIC_INTERNAL_ONLY" # Eventarc's deliveries only
  deletion_protection = false

  template {
    service_account = google_service_account.role["completion"].email

    scaling {
      max_instance_count = var.completion_max_instances
    }

    containers {
      image   = var.image
      command = ["jobfleet"]
      args    = ["function"]

      ports {
        container_port = 8080
      }

      dynamic "env" {
        for_each = local.completion_env
        content {
          name  = env.key
          value = env.value
        }
      }
    }
  }

  lifecycle {
    # Cloud Build deploys new images (cloudbuild.yaml); apply must not roll them back.
    ignore_changes = [template[0].containers[0].image, client, client_version]
  }

  depends_on = [google_project_service.apis]
}

resource "google_eventarc_trigger" "completion" {
  project                 = var.project_id
  name                    = "${var.prefix}-completion"
  location                = var.region # Firestore's: the database is in the region
  service_account         = google_service_account.role["trigger"].email
  event_data_content_type = "application/protobuf"

  matching_criteria {
    attribute = "type"
    value     = "google.cloud.firestore.document.v1.updated"
  }

  matching_criteria {
    attribute = "database"
    value     = google_firestore_database.store.name
  }

  matching_criteria {
    attribute = "document"
    value     = "jobfleet_orchestrations/{o}/shards/{s}"
    operator  = "match-path-pattern"
  }

  destination {
    cloud_run_service {
      service = google_cloud_run_v2_service.completion.name
      region  = var.region
    }
  }

  depends_on = [google_project_iam_member.role["trigger/eventreceiver"]]
}

resource "google_cloud_run_v2_service_iam_member" "completion_invoker" {
  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_service.completion.name
  role     = "roles/run.invoker"
  member   = google_service_account.role["trigger"].member
}

resource "google_cloud_run_v2_service_iam_member" "completion_deployer" {
  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_service.completion.name
  role     = "roles/run.developer"
  member   = google_service_account.role["deployer"].member
}

# The webhook signing secret, readable by the processes that deliver webhooks.
resource "google_secret_manager_secret_iam_member" "webhook_secret" {
  for_each = local.webhook_secret == null ? toset([]) : toset(["api", "completion"])

  project   = var.project_id
  secret_id = local.webhook_secret
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.role[each.value].member
}
