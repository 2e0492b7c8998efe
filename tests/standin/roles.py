"""The IAM roles the cloud path grants, with the permissions the stand-ins check.

Source: Google's IAM role reference, https://cloud.google.com/iam/docs/roles-permissions (one page
per service: .../roles-permissions/aiplatform, /storage (and, for the legacy bucket roles,
https://cloud.google.com/storage/docs/access-control/iam-roles), /secretmanager, /run, /iam,
/artifactregistry, /logging, /serviceusage, /resourcemanager), and the Cloud Run role table at
https://cloud.google.com/run/docs/reference/iam/roles. Each role below lists, copied from those
pages, the permissions of that role that some stand-in checks; a role's other permissions (the
reference lists hundreds for some) are left out because no stand-in asks for them. A permission
missing here is one the role does not have: `roles/storage.objectAdmin`, for one, holds
`storage.objects.*` but no `storage.buckets.*` permission.

`roles/owner` holds every permission of every service (the reference lists Owner against each
one), so it is written as the wildcard `*`.
"""

from __future__ import annotations

OWNER = "roles/owner"

_AIPLATFORM_USER = {
    # roles/aiplatform.user: aiplatform.customJobs.*, endpoints.*, models.*, operations.*
    "aiplatform.customJobs.cancel",
    "aiplatform.customJobs.create",
    "aiplatform.customJobs.get",
    "aiplatform.customJobs.list",
    "aiplatform.endpoints.create",
    "aiplatform.endpoints.delete",
    "aiplatform.endpoints.deploy",
    "aiplatform.endpoints.get",
    "aiplatform.endpoints.list",
    "aiplatform.endpoints.predict",
    "aiplatform.endpoints.undeploy",
    "aiplatform.endpoints.update",
    "aiplatform.models.delete",
    "aiplatform.models.deploy",
    "aiplatform.models.get",
    "aiplatform.models.list",
    "aiplatform.models.undeploy",
    "aiplatform.models.update",
    "aiplatform.models.upload",
    "aiplatform.modelDeploymentMonitoringJobs.create",
    "aiplatform.modelDeploymentMonitoringJobs.get",
    "aiplatform.modelDeploymentMonitoringJobs.list",
    "aiplatform.operations.list",
    "resourcemanager.projects.get",
}

ROLES: dict[str, frozenset[str]] = {
    OWNER: frozenset({"*"}),
    "roles/viewer": frozenset(
        {
            "aiplatform.customJobs.get",
            "aiplatform.customJobs.list",
            "aiplatform.endpoints.get",
            "aiplatform.endpoints.list",
            "aiplatform.models.get",
            "aiplatform.models.list",
            "artifactregistry.repositories.get",
            "iam.serviceAccounts.get",
            "resourcemanager.projects.get",
            "resourcemanager.projects.getIamPolicy",
            "run.services.get",
            "secretmanager.secrets.get",
            "serviceusage.services.get",
            "serviceusage.services.list",
            "storage.buckets.get",
            "storage.buckets.list",
        }
    ),
    "roles/aiplatform.user": frozenset(_AIPLATFORM_USER),
    "roles/aiplatform.admin": frozenset(
        _AIPLATFORM_USER | {"aiplatform.endpoints.getIamPolicy", "aiplatform.endpoints.setIamPolicy"}
    ),
    "roles/artifactregistry.reader": frozenset(
        {
            "artifactregistry.repositories.get",
            "artifactregistry.repositories.list",
            "artifactregistry.repositories.downloadArtifacts",
        }
    ),
    "roles/artifactregistry.writer": frozenset(
        {
            "artifactregistry.repositories.get",
            "artifactregistry.repositories.list",
            "artifactregistry.repositories.downloadArtifacts",
            "artifactregistry.repositories.uploadArtifacts",
        }
    ),
    "roles/artifactregistry.admin": frozenset(
        {
            "artifactregistry.repositories.create",
            "artifactregistry.repositories.get",
            "artifactregistry.repositories.list",
            "artifactregistry.repositories.downloadArtifacts",
            "artifactregistry.repositories.uploadArtifacts",
        }
    ),
    # Granted on a bucket only (legacy roles cannot be granted on a project); the least role that
    # reads the bucket's own metadata: https://cloud.google.com/storage/docs/access-control/iam-roles
    "roles/storage.legacyBucketReader": frozenset({"storage.buckets.get", "storage.objects.list"}),
    "roles/storage.objectViewer": frozenset({"storage.objects.get", "storage.objects.list"}),
    "roles/storage.objectCreator": frozenset({"storage.objects.create"}),
    "roles/storage.objectAdmin": frozenset(
        {
            "storage.objects.create",
            "storage.objects.delete",
            "storage.objects.get",
            "storage.objects.list",
            "storage.objects.update",
            "storage.objects.getIamPolicy",
            "storage.objects.setIamPolicy",
            "resourcemanager.projects.get",
        }
    ),
    "roles/storage.admin": frozenset(
        {
            "storage.buckets.create",
            "storage.buckets.delete",
            "storage.buckets.get",
            "storage.buckets.getIamPolicy",
            "storage.buckets.list",
            "storage.buckets.setIamPolicy",
            "storage.buckets.update",
            "storage.objects.create",
            "storage.objects.delete",
            "storage.objects.get",
            "storage.objects.list",
            "storage.objects.update",
        }
    ),
    "roles/secretmanager.secretAccessor": frozenset({"secretmanager.versions.access"}),
    "roles/secretmanager.admin": frozenset(
        {
            "secretmanager.secrets.create",
            "secretmanager.secrets.get",
            "secretmanager.secrets.getIamPolicy",
            "secretmanager.secrets.setIamPolicy",
            "secretmanager.versions.access",
            "secretmanager.versions.add",
            "secretmanager.versions.get",
        }
    ),
    "roles/logging.logWriter": frozenset({"logging.logEntries.create"}),
    "roles/run.admin": frozenset(
        {
            "run.services.create",
            "run.services.delete",
            "run.services.get",
            "run.services.getIamPolicy",
            "run.services.list",
            "run.services.setIamPolicy",
            "run.services.update",
            "run.routes.invoke",
            "resourcemanager.projects.get",
        }
    ),
    "roles/run.invoker": frozenset({"run.routes.invoke"}),
    "roles/iam.serviceAccountUser": frozenset(
        {
            "iam.serviceAccounts.actAs",
            "iam.serviceAccounts.get",
            "iam.serviceAccounts.list",
            "resourcemanager.projects.get",
        }
    ),
    "roles/iam.serviceAccountAdmin": frozenset(
        {
            "iam.serviceAccounts.create",
            "iam.serviceAccounts.delete",
            "iam.serviceAccounts.get",
            "iam.serviceAccounts.getIamPolicy",
            "iam.serviceAccounts.list",
            "iam.serviceAccounts.setIamPolicy",
            "iam.serviceAccounts.update",
            "resourcemanager.projects.get",
        }
    ),
    "roles/iam.serviceAccountTokenCreator": frozenset(
        {"iam.serviceAccounts.getAccessToken", "iam.serviceAccounts.signBlob", "iam.serviceAccounts.signJwt"}
    ),
    "roles/iam.workloadIdentityUser": frozenset(
        {"iam.serviceAccounts.getAccessToken", "iam.serviceAccounts.getOpenIdToken"}
    ),
    "roles/serviceusage.serviceUsageAdmin": frozenset(
        {"serviceusage.services.enable", "serviceusage.services.get", "serviceusage.services.list"}
    ),
    "roles/resourcemanager.projectIamAdmin": frozenset(
        {
            "resourcemanager.projects.get",
            "resourcemanager.projects.getIamPolicy",
            "resourcemanager.projects.setIamPolicy",
        }
    ),
}


def grants(role: str, permission: str) -> bool:
    """Whether `role` holds `permission`; a role the table does not know holds nothing."""
    held = ROLES.get(role, frozenset())
    return "*" in held or permission in held
