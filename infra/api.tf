# The HTTP API and dashboard: the deployment's image running `jobfleet serve`. Callers
# send Google-signed ID tokens for its URL: Cloud Run lets in only the principals with
# run.invoker here (var.api_invokers and the scheduler's account), and the API checks
# the token's e-mail again against JOBFLEET_API_PRINCIPALS (api/auth.py).

resource "google_cloud_run_v2_service" "api" {
  count = local.deployed ? 1 : 0

  project             = var.project_id
  name                = "${var.prefix}-api"
  location            = var.region
  labels              = local.deployment_image_label
  ingress             = "INGRESS_TRAFFIC_ALL" # callers from outside Google Cloud (CI, people), all with ID tokens
  deletion_protection = false

  template {
    service_account = google_service_account.role["api"].email
    # Live events hold a request open as long as someone follows a run; browsers
    # reconnect with Last-Event-ID after this and resume where they were.
    timeout = "3600s"

    scaling {
      max_instance_count = var.api_max_instances
    }

    containers {
      image   = var.image
      command = ["jobfleet"]
      args    = ["serve", "--host", "0.0.0.0"]

      ports {
        container_port = 8080
      }

      dynamic "env" {
        for_each = local.api_env
        content {
          name  = env.key
          value = env.value
        }
      }

      startup_probe {
        http_get {
          path = "/healthz"
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

# The keys of a for_each must be known when Terraform plans, so the scheduler's account
# (an e-mail only known once the account exists) is bound by a resource of its own.
resource "google_cloud_run_v2_service_iam_member" "api_invokers" {
  for_each = local.deployed ? toset(var.api_invokers) : toset([])

  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_service.api[0].name
  role     = "roles/run.invoker"
  member   = each.value
}

resource "google_cloud_run_v2_service_iam_member" "api_scheduler" {
  count = local.deployed ? 1 : 0

  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_service.api[0].name
  role     = "roles/run.invoker"
  member   = google_service_account.role["scheduler"].member
}

resource "google_cloud_run_v2_service_iam_member" "api_deployer" {
  count = local.deployed ? 1 : 0

  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_service.api[0].name
  role     = "roles/run.developer"
  member   = google_service_account.role["deployer"].member
}
