# The store: Firestore's (default) database in native mode, in the region, with the
# composite indexes of the queries the SDK makes, the TTL policies that delete history
# after JOBFLEET_RETENTION_DAYS, and the fields no query reads kept out of indexes.
# tests/infra/test_drift.py checks the indexes against the queries the code runs.

resource "google_firestore_database" "store" {
  project                           = var.project_id
  name                              = "(default)"
  location_id                       = var.region
  type                              = "FIRESTORE_NATIVE"
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"
  delete_protection_state           = "DELETE_PROTECTION_ENABLED"
  deletion_policy                   = "ABANDON"

  depends_on = [google_project_service.apis]
}

locals {
  # Equality fields first, then the order (or range) fields, as each query names them.
  firestore_indexes = {
    # Claims and the next ready time: a shard's Pending instances by not_before, index
    # (firestore_worker.py: _ready, next_ready_at).
    "jobs-shard-status-not_before-index" = {
      collection = "jobs", scope = "COLLECTION"
      fields     = [["shard", "ASCENDING"], ["status", "ASCENDING"], ["not_before", "ASCENDING"], ["index", "ASCENDING"]]
    }
    # A shard's held or unfinished instances (stale_claims' orphans, _unfinished_refs).
    "jobs-shard-status" = {
      collection = "jobs", scope = "COLLECTION"
      fields     = [["shard", "ASCENDING"], ["status", "ASCENDING"]]
    }
    # Held instances whose claim-time lease has passed (stale_claims).
    "jobs-status-lease_until" = {
      collection = "jobs", scope = "COLLECTION"
      fields     = [["status", "ASCENDING"], ["lease_until", "ASCENDING"]]
    }
    # Results and instance pages by status, in index order (results, list_instances).
    "jobs-status-index" = {
      collection = "jobs", scope = "COLLECTION"
      fields     = [["status", "ASCENDING"], ["index", "ASCENDING"]]
    }
    # What a worker holds, across orchestrations (heartbeat).
    "jobs-group-owner-status" = {
      collection = "jobs", scope = "COLLECTION_GROUP"
      fields     = [["owner", "ASCENDING"], ["status", "ASCENDING"]]
    }
    # History, newest first, by any mix of job name, status and tag (list_orchestrations).
    "orchestrations-job_name-created_at" = {
      collection = "jobfleet_orchestrations", scope = "COLLECTION"
      fields     = [["job_name", "ASCENDING"], ["created_at", "DESCENDING"]]
    }
    "orchestrations-status-created_at" = {
      collection = "jobfleet_orchestrations", scope = "COLLECTION"
      fields     = [["status", "ASCENDING"], ["created_at", "DESCENDING"]]
    }
    "orchestrations-tag_pairs-created_at" = {
      collection = "jobfleet_orchestrations", scope = "COLLECTION"
      fields     = [["tag_pairs", "CONTAINS"], ["created_at", "DESCENDING"]]
    }
    "orchestrations-job_name-status-created_at" = {
      collection = "jobfleet_orchestrations", scope = "COLLECTION"
      fields     = [["job_name", "ASCENDING"], ["status", "ASCENDING"], ["created_at", "DESCENDING"]]
    }
    "orchestrations-job_name-tag_pairs-created_at" = {
      collection = "jobfleet_orchestrations", scope = "COLLECTION"
      fields     = [["job_name", "ASCENDING"], ["tag_pairs", "CONTAINS"], ["created_at", "DESCENDING"]]
    }
    "orchestrations-status-tag_pairs-created_at" = {
      collection = "jobfleet_orchestrations", scope = "COLLECTION"
      fields     = [["status", "ASCENDING"], ["tag_pairs", "CONTAINS"], ["created_at", "DESCENDING"]]
    }
    "orchestrations-job_name-status-tag_pairs-created_at" = {
      collection = "jobfleet_orchestrations", scope = "COLLECTION"
      fields     = [["job_name", "ASCENDING"], ["status", "ASCENDING"], ["tag_pairs", "CONTAINS"], ["created_at", "DESCENDING"]]
    }
  }

  # Documents of these collection groups carry `expire_at`, when Firestore deletes them.
  ttl_collection_groups = ["jobfleet_orchestrations", "jobs", "shards", "fires", "jobfleet_webhooks", "jobfleet_leases"]

  # Large values no query reads: out of the single-field indexes (cheaper writes, and
  # no 1,500-byte index entry limit on them).
  unindexed_fields = {
    "jobs-params"       = { collection = "jobs", field = "params" }
    "jobs-result"       = { collection = "jobs", field = "result" }
    "jobs-error"        = { collection = "jobs", field = "error" }
    "schedules-params"  = { collection = "jobfleet_schedules", field = "params" }
    "webhooks-payload"  = { collection = "jobfleet_webhooks", field = "payload" }
    "webhooks-attempts" = { collection = "jobfleet_webhooks", field = "attempts" }
  }
}

resource "google_firestore_index" "query" {
  for_each = local.firestore_indexes

  project     = var.project_id
  database    = google_firestore_database.store.name
  collection  = each.value.collection
  query_scope = each.value.scope

  dynamic "fields" {
    for_each = each.value.fields
    content {
      field_path   = fields.value[0]
      order        = fields.value[1] == "CONTAINS" ? null : fields.value[1]
      array_config = fields.value[1] == "CONTAINS" ? "CONTAINS" : null
    }
  }
}

# TTL on expire_at, which is also kept out of the indexes: Google advises it, since a
# timestamp that grows with time makes a hot spot in an index, and no query reads it.
resource "google_firestore_field" "expire_at" {
  for_each = toset(local.ttl_collection_groups)

  project    = var.project_id
  database   = google_firestore_database.store.name
  collection = each.value
  field      = "expire_at"

  ttl_config {}
  index_config {}
}

resource "google_firestore_field" "unindexed" {
  for_each = local.unindexed_fields

  project    = var.project_id
  database   = google_firestore_database.store.name
  collection = each.value.collection
  field      = each.value.field

  index_config {}
}
