# The worker Cloud Run jobs: the base one (JOBFLEET_CLOUD_RUN_JOB) and one per worker
# class, <base>-<class name>. A kick-off runs one with overrides of its task count and
# environment (backends/gcp/cloud_run.py); the job holds the machine, the task timeout
# and the task retries. Two resources only because a class with an image of its own
# must follow its tfvars, while the jobs on the deployment's image follow Cloud Build.

resource "google_cloud_run_v2_job" "worker" {
  for_each = local.deployment_worker_jobs

  project             = var.project_id
  name                = each.key
  location            = var.region
  labels              = local.deployment_image_label
  deletion_protection = false

  template {
    # Cloud Run wants parallelism <= task count; each kick-off overrides the count.
    parallelism = var.worker_parallelism
    task_count  = max(var.worker_parallelism, 1)

    template {
      service_account = google_service_account.role["worker"].email
      timeout         = "${each.value.task_timeout_seconds}s"
      max_retries     = each.value.max_retries

      containers {
        image = var.image
        args  = ["worker"]

        resources {
          limits = {
            cpu    = tostring(each.value.cpu)
            memory = each.value.memory
          }
        }

        dynamic "env" {
          for_each = local.worker_env
          content {
            name  = env.key
            value = env.value
          }
        }
      }
    }
  }

  lifecycle {
    # Cloud Build deploys new images (cloudbuild.yaml); apply must not roll them back.
    ignore_changes = [template[0].template[0].containers[0].image, client, client_version]
  }

  depends_on = [google_project_service.apis]
}

resource "google_cloud_run_v2_job" "worker_own_image" {
  for_each = local.own_image_worker_jobs

  project             = var.project_id
  name                = each.key
  location            = var.region
  deletion_protection = false

  template {
    # Cloud Run wants parallelism <= task count; each kick-off overrides the count.
    parallelism = var.worker_parallelism
    task_count  = max(var.worker_parallelism, 1)

    template {
      service_account = google_service_account.role["worker"].email
      timeout         = "${each.value.task_timeout_seconds}s"
      max_retries     = each.value.max_retries

      containers {
        image = each.value.image
        args  = ["worker"]

        resources {
          limits = {
            cpu    = tostring(each.value.cpu)
            memory = each.value.memory
          }
        }

        dynamic "env" {
          for_each = local.worker_env
          content {
            name  = env.key
            value = env.value
          }
        }
      }
    }
  }

  lifecycle {
    ignore_changes = [client, client_version]
  }

  depends_on = [google_project_service.apis]
}

locals {
  # The worker jobs that exist, by their resources: bindings on them wait for them, and
  # on the first apply (no image yet) name none of those on the deployment's image.
  worker_job_names = merge(
    { for key, job in google_cloud_run_v2_job.worker : key => job.name },
    { for key, job in google_cloud_run_v2_job.worker_own_image : key => job.name },
  )
  # Who starts executions (RunJob with overrides), cancels them and reads their state.
  job_developers = {
    for pair in setproduct(keys(local.worker_job_names), ["api", "completion"]) :
    "${pair[0]}/${pair[1]}" => { job = local.worker_job_names[pair[0]], role = pair[1] }
  }
}

resource "google_cloud_run_v2_job_iam_member" "launchers" {
  for_each = local.job_developers

  project  = var.project_id
  location = var.region
  name     = each.value.job
  role     = "roles/run.developer"
  member   = google_service_account.role[each.value.role].member
}

# Cloud Build updates the image of the jobs that run the deployment's image.
resource "google_cloud_run_v2_job_iam_member" "deployer" {
  for_each = google_cloud_run_v2_job.worker

  project  = var.project_id
  location = var.region
  name     = each.value.name
  role     = "roles/run.developer"
  member   = google_service_account.role["deployer"].member
}
