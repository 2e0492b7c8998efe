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
- long-running operations: `standin.operations.done(type_url, body)` answers finished inline,
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
            standin.route("POST", "/v1/projects/{project}/locations/{location}/models:upload")(self.upload)

        def upload(self, request: Request) -> dict:
            ...  # validate request.body like the service does; raise ApiError(...) when it would
            return request_standin.operations.done(
                "type.googleapis.com/google.cloud.aiplatform.v1.UploadModelResponse", {"model": name}
            )

    cloud = LocalCloud.start(...)              # tests/standin/cloud.py: every API already wired
    models = VertexModels(cloud.vertex)        # more routes on the same Vertex AI host

A new host (e.g. Cloud Run) is `StandIn("run", log=cloud.log).start()` plus its routes; add it to
`LocalCloud` so `urls` names it. Routes registered later win over earlier ones for the same path.

Modules: server.py (the framework), vertex_jobs.py (CustomJobs that run the job's container in the
real Docker engine, or a scripted outcome), setup_apis.py (Service Usage, Artifact Registry, IAM,
Secret Manager, Resource Manager), cloud.py (all of them at once), __main__.py
(`python -m tests.standin`: the stand-ins and a GCS emulator for a manual rehearsal).
"""
