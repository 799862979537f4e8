# Completion events (JOBFLEET_TOPIC), and the dead-letter topic subscribers name in
# `jobfleet.subscribe(..., dead_letter_topic=)`, with a subscription that keeps its
# messages (Pub/Sub drops those of a topic nobody subscribes to).

resource "google_pubsub_topic" "completed" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption keys; a customer-managed key is a choice for the project's owner, not a default of this module.
  project = var.project_id
  name    = local.topic

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "dead_letter" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption keys; a customer-managed key is a choice for the project's owner, not a default of this module.
  project = var.project_id
  name    = "${local.topic}-dead-letter"

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_subscription" "dead_letter" {
  project                    = var.project_id
  name                       = google_pubsub_topic.dead_letter.name
  topic                      = google_pubsub_topic.dead_letter.id
  message_retention_duration = "604800s" # 7 days, Pub/Sub's longest: time to look

  expiration_policy {
    ttl = "" # never expires, however long nobody reads it
  }
}

# The processes that announce an orchestration's end publish; they create nothing.
resource "google_pubsub_topic_iam_member" "publishers" {
  for_each = toset(["api", "completion"])

  project = var.project_id
  topic   = google_pubsub_topic.completed.name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.role[each.value].member
}
