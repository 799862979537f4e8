# The Google APIs the deployment calls or is made of. Left enabled on destroy: other
# things in the project may use them too.
resource "google_project_service" "apis" {
  for_each = toset([
    "artifactregistry.googleapis.com", # the image
    "cloudbuild.googleapis.com",       # cloudbuild.yaml
    "cloudscheduler.googleapis.com",   # schedules and the sweep
    "eventarc.googleapis.com",         # the completion trigger
    "firestore.googleapis.com",        # the store
    "iam.googleapis.com",              # the service accounts
    "logging.googleapis.com",          # `jobfleet logs` reads task output
    "pubsub.googleapis.com",           # completion events (and Eventarc's transport)
    "run.googleapis.com",              # workers, API, completion service
    "secretmanager.googleapis.com",    # the webhook signing secret
  ])

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}
