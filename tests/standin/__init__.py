"""Local stand-ins for Google Cloud APIs: real HTTP servers on 127.0.0.1 that speak the REST contract.

The code under test (`edge.cloud`) talks to these through the official Google clients, exactly as it
talks to Google; this package imports nothing from `edge` and shares only the wire contract
(../shared/cloud/vertex-rest-contract.md, google-clients-local.md). Each API is one `StandIn`: its own
host (127.0.0.1:<free port>), its own routes, all writing to one `RequestLog` that tests assert on.

What the framework gives every API (tests/standin/server.py):
- routing on the URL-decoded path (`models/1%402` arrives as `models/1@2`), templates like
  `/v1/projects/{project}/secrets/{secret}:addVersion` (`{x}` one segment, `{x:path}` several);
  the `$alt=json;enum-encoding=int` query every gapic call adds is accepted (anything else is a 400);
- errors as Google sends them: `raise ApiError(404, "...")` answers
  `{"error": {"code": 404, "message": "...", "status": "NOT_FOUND"}}`, which api_core turns into
  `NotFound` (409 into `Conflict`, 403 `Forbidden`, 429 `TooManyRequests`);
  `standin.fail_next("POST", r"customJobs$", ApiError(429, "Quota exceeded"))` injects one failure;
- long-running operations: `standin.operations.finished(parent, type_url, body)` answers finished
  inline (named `parent/operations/<id>`: every operation Google returns has a name),
  `standin.operations.pending(parent, type_url, body, polls=n)` makes the client poll
  `GET <prefix>/<parent>/operations/<id>` (prefix `/ui` for Vertex AI, `/v1` for the others);
  the `@type` must be the exact v1 message the client expects;
- a request log: `log.find(service=, method=, path=)`, `log.mutations()`, `log.counts()`, `log.text()`
  (everything that crossed the wire, base64 payloads decoded, to prove a secret never did).

Adding an API or more routes to one (the pattern every module here follows):

    # tests/standin/vertex_models.py
    class VertexModels:
        def __init__(self, standin: StandIn) -> None:
            self.models: dict[str, dict] = {}
            route = "/v1/projects/{project}/locations/{location}/models:upload"
            standin.route("POST", route, "aiplatform.models.upload")(self.upload)  # the permission

        def upload(self, request: Request) -> dict:
            ...  # validate request.body like the service does; raise ApiError(...) when it would
            return self.standin.operations.finished(
                name, "type.googleapis.com/google.cloud.aiplatform.v1.UploadModelResponse", {"model": name}
            )

    cloud = LocalCloud.start(...)              # tests/standin/cloud.py: every API already wired
    models = VertexModels(cloud.vertex)        # more routes on the same Vertex AI host

A new host (e.g. Cloud Run) is `cloud.add(StandIn("run"))` plus its routes: it shares the cloud's
log and access rules, and `urls` names it. Routes registered later win over earlier ones for the same path.

Every route of a `LocalCloud` is guarded by its `Access` (access.py): the caller's bearer token,
the project, the API's state and the permission the method needs (roles.py: Google's role
reference), refused in Google's error shape.

Modules: server.py (the framework), access.py (projects, principals, policies, API state),
roles.py (roles -> permissions), vertex_jobs.py (CustomJobs that run the job's container in the
real Docker engine, as a local process, or a scripted outcome), vertex_models.py and
vertex_endpoints.py (Model Registry, endpoints that serve), vertex_catalogue.py (machine types and
accelerators), setup_apis.py (Service Usage, Artifact Registry, IAM, Secret Manager, Resource
Manager), cloudrun.py, federation.py (STS, IAM Credentials), oidc.py (CircleCI's OIDC issuer and
`circleci` command), gcs_front.py (the checking front of the GCS emulator), cloud.py (all of them
at once), emulate.py and __main__.py (`make emulate`: the whole path for one project).
"""
