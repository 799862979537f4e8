# One service account per role, each granted what its code calls and no more; the
# bindings sit on the resources themselves (topic, job, service, account, repository,
# secret) wherever IAM allows, and on the project only where it does not (Firestore,
# Cloud Scheduler, Cloud Logging, Eventarc's event receiver).
locals {
  roles = {
    worker     = "jobfleet worker tasks (Cloud Run jobs running `jobfleet worker`)"
    api        = "jobfleet API service (`jobfleet serve`): kick-offs, cancels, sweeps, logs, schedules, webhooks"
    completion = "jobfleet completion service (`jobfleet function`): settles, announces, starts next stages"
    scheduler  = "Cloud Scheduler's identity for the OIDC tokens of fires and the sweep"
    trigger    = "the Eventarc trigger's identity, which invokes the completion service"
    deployer   = "Cloud Build's build account (cloudbuild.yaml)"
  }

  # Project-level roles: the services whose IAM has no smaller resource to bind on.
  project_roles = {
    "worker/datastore"      = { role = "worker", grant = "roles/datastore.user" }
    "api/datastore"         = { role = "api", grant = "roles/datastore.user" }
    "api/scheduler"         = { role = "api", grant = "roles/cloudscheduler.admin" }
    "api/logs"              = { role = "api", grant = "roles/logging.viewer" }
    "completion/datastore"  = { role = "completion", grant = "roles/datastore.user" }
    "trigger/eventreceiver" = { role = "trigger", grant = "roles/eventarc.eventReceiver" }
    "deployer/datastore"    = { role = "deployer", grant = "roles/datastore.user" }
    "deployer/scheduler"    = { role = "deployer", grant = "roles/cloudscheduler.admin" }
    "deployer/logwriter"    = { role = "deployer", grant = "roles/logging.logWriter" }
    # cloudbuild.yaml finds the labelled jobs and services by listing them.
    "deployer/run-viewer" = { role = "deployer", grant = "roles/run.viewer" }
  }

  # Who acts as whom: deploying a job or service that runs as an account, or making
  # a Cloud Scheduler job whose OIDC token is an account's.
  acts_as = {
    "api/scheduler"       = { role = "api", account = "scheduler" }
    "deployer/worker"     = { role = "deployer", account = "worker" }
    "deployer/api"        = { role = "deployer", account = "api" }
    "deployer/completion" = { role = "deployer", account = "completion" }
    "deployer/scheduler"  = { role = "deployer", account = "scheduler" }
  }
}

resource "google_service_account" "role" {
  for_each = local.roles

  project      = var.project_id
  account_id   = "${var.prefix}-${each.key}"
  display_name = each.value

  depends_on = [google_project_service.apis]
}

resource "google_project_iam_member" "role" {
  for_each = local.project_roles

  project = var.project_id
  role    = each.value.grant
  member  = google_service_account.role[each.value.role].member
}

resource "google_service_account_iam_member" "acts_as" {
  for_each = local.acts_as

  service_account_id = google_service_account.role[each.value.account].name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.role[each.value.role].member
}
