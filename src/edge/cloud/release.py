"""Release a model to its Vertex AI endpoint: deploy a candidate with a canary, smoke-test it, promote
or roll back (`edge endpoint deploy`, `edge endpoint rollback`).

`Release.deploy` is a small state machine over what the endpoint holds right now, so running it
again after a crash at any point continues from there instead of starting over:

    nothing deployed          -> deploy the candidate with all the traffic, smoke-test it
    candidate not deployed    -> deploy it with the canary share (the others keep the rest)
    candidate deployed        -> smoke-test it through the endpoint
       smoke test passes      -> 100% to it, undeploy the others, move the `production` alias
       smoke test fails       -> 100% back to the others, undeploy it
    candidate alone, 100%     -> make sure the aliases say so; nothing else to do

A candidate whose container never becomes healthy fails its `deployModel` operation: the endpoint
is then left as it was (the previous model keeps all its traffic) and the command exits non-zero.
"""

from __future__ import annotations

import base64
import io
import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.cloud.clients import Clients
from edge.cloud.errors import CloudError, explain
from edge.cloud.registry import CANDIDATE, PREVIOUS, PRODUCTION, ModelVersion, Registry
from edge.data import CLASS_NAMES

DEFAULT_MACHINE_TYPE = "n1-standard-2"
Progress = Callable[[str], None]
# Shows that a long call (deployModel: minutes) is still running; the CLI's prints a line every 30 s.
Waiting = Callable[[str], AbstractContextManager[Any]]


class ReleaseError(CloudError):
    """The candidate was not released; the endpoint was returned to its previous state."""


@dataclass(frozen=True)
class SmokeImage:
    png: bytes
    label: str


@dataclass
class SmokeReport:
    """What the candidate answered through the endpoint."""

    answers: int = 0
    correct: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    requests: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def p95_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 95)) if self.latencies_ms else math.inf

    def summary(self) -> str:
        return (
            f"{self.correct}/{self.answers} correct from the candidate in {self.requests} requests, "
            f"p95 latency {self.p95_ms:.0f} ms"
        )


@dataclass(frozen=True)
class SmokePolicy:
    images: int = 10
    min_correct: float = 0.8
    max_p95_ms: float = 2000.0


def smoke_images(test_npz: bytes, count: int) -> list[SmokeImage]:
    """The first test images of each class in turn: a few real images with known classes."""
    from PIL import Image

    with np.load(io.BytesIO(test_npz)) as npz:
        images, labels = npz["images"], npz["labels"]
    picked: list[SmokeImage] = []
    by_class = [np.flatnonzero(labels == c) for c in range(len(CLASS_NAMES))]
    for i in range(count):
        members = by_class[i % len(CLASS_NAMES)]
        if len(members) <= i // len(CLASS_NAMES):
            continue
        index = members[i // len(CLASS_NAMES)]
        buffer = io.BytesIO()
        Image.fromarray(images[index].astype(np.uint8), mode="L").save(buffer, format="PNG")
        picked.append(SmokeImage(buffer.getvalue(), CLASS_NAMES[int(labels[index])]))
    if not picked:
        raise CloudError("the test split has no images for the smoke test")
    return picked


def instance(png: bytes) -> dict[str, Any]:
    return {"b64": base64.b64encode(png).decode("ascii")}


class Release:
    """The endpoint named in edge.yaml, and the moves of a release on it."""

    def __init__(
        self,
        clients: Clients,
        progress: Progress = lambda _m: None,
        machine_type: str = DEFAULT_MACHINE_TYPE,
        waiting: Waiting = lambda _m: nullcontext(),
    ) -> None:
        self.clients = clients
        self.progress = progress
        self.waiting = waiting
        self.machine_type = machine_type
        self.registry = Registry(clients, progress)
        self._endpoint: Any = None

    # --- the endpoint ----------------------------------------------------------------------------
    def find_endpoint(self) -> Any | None:
        """The endpoint named `endpoint_name` in edge.yaml, or None."""
        aiplatform = self.clients.aiplatform()
        from google.api_core import exceptions

        name = self.clients.settings.endpoint_name
        try:
            found = aiplatform.Endpoint.list(filter=f'display_name="{name}"')
        except exceptions.GoogleAPICallError as exc:
            raise explain(exc, "listing endpoints") from exc
        if len(found) > 1:
            raise CloudError(
                f"{len(found)} endpoints are named {name!r}: delete the extra ones in the console, "
                "or set another endpoint_name in edge.yaml"
            )
        return found[0] if found else None

    def endpoint(self, bigquery_table: str | None = None) -> Any:
        """Reuse the endpoint, or create it (with request-response logging to BigQuery if asked)."""
        if self._endpoint is not None:
            return self._endpoint
        found = self.find_endpoint()
        if found is None:
            aiplatform = self.clients.aiplatform()
            from google.api_core import exceptions

            name = self.clients.settings.endpoint_name
            self.progress(f"Creating endpoint {name}")
            logging_args: dict[str, Any] = {}
            if bigquery_table:
                logging_args = {
                    "enable_request_response_logging": True,
                    "request_response_logging_sampling_rate": 1.0,
                    "request_response_logging_bq_destination_table": bigquery_table,
                }
            try:
                found = aiplatform.Endpoint.create(
                    display_name=name, labels={"managed_by": "edge"}, **logging_args
                )
            except exceptions.GoogleAPICallError as exc:
                raise explain(exc, "creating the endpoint") from exc
        elif bigquery_table and not found.gca_resource.predict_request_response_logging_config.enabled:
            raise CloudError(
                "request-response logging is set when the endpoint is created: this endpoint exists "
                "without it; enable it in the console or delete the endpoint and deploy again"
            )
        self._endpoint = found
        return found

    def state(self) -> dict[str, Any]:
        """Deployed models with their traffic share and the registry labels of each."""
        endpoint = self.find_endpoint()
        if endpoint is None:
            return {"endpoint": None, "deployed": []}
        resource = endpoint.gca_resource
        split = dict(resource.traffic_split)
        deployed = []
        for dm in resource.deployed_models:
            version = self.registry.get(str(dm.model_version_id))
            deployed.append(
                {
                    "deployed_model_id": dm.id,
                    "version": str(dm.model_version_id),
                    "traffic": int(split.get(dm.id, 0)),
                    "aliases": list(version.aliases) if version else [],
                    "labels": dict(version.labels) if version else {},
                    "image": version.image_uri if version else "",
                }
            )
        return {
            "endpoint": endpoint.resource_name,
            "display_name": resource.display_name,
            "deployed": deployed,
        }

    # --- a release -------------------------------------------------------------------------------
    def deploy(
        self,
        candidate: ModelVersion,
        images: Sequence[SmokeImage],
        *,
        canary_percent: int = 10,
        policy: SmokePolicy = SmokePolicy(),
        bigquery_table: str | None = None,
    ) -> SmokeReport | None:
        """Take `candidate` to 100% of the endpoint's traffic, or leave the endpoint as it was."""
        if not 1 <= canary_percent <= 100:
            raise CloudError("the canary share is a percentage: 1 to 100")
        endpoint = self.endpoint(bigquery_table)
        ours, others = self._split(endpoint, candidate)
        if ours is not None and not others:
            self.progress(f"Version {candidate.version_id} already serves all the traffic.")
            self._promote_aliases(candidate)
            return None
        if ours is None:
            share = 100 if not others else canary_percent
            self.progress(
                f"Deploying version {candidate.version_id} to {self.clients.settings.endpoint_name} "
                f"with {share}% of the traffic (its container must become healthy first)"
            )
            self._deploy_model(endpoint, candidate, share)
            ours, others = self._split(endpoint, candidate)
            if ours is None:
                raise CloudError("the deployment finished but the endpoint does not list the candidate")
        self.progress(f"Smoke-testing version {candidate.version_id} through the endpoint")
        report = self.smoke_test(endpoint, ours, images, policy)
        self.progress(report.summary())
        if report.problems:
            self._roll_back(endpoint, ours, others)
            raise ReleaseError(
                f"smoke test of version {candidate.version_id} failed ({'; '.join(report.problems)}); "
                "rolled back: "
                + (
                    f"{len(others)} previous model(s) keep all the traffic"
                    if others
                    else "the endpoint serves nothing, as before"
                )
            )
        self._promote(endpoint, candidate, ours, others)
        return report

    def _split(self, endpoint: Any, candidate: ModelVersion) -> tuple[str | None, dict[str, str]]:
        """The candidate's deployed model id (or None) and the others' ids with their versions."""
        endpoint._sync_gca_resource()
        ours = None
        others: dict[str, str] = {}
        for dm in endpoint.gca_resource.deployed_models:
            same_model = dm.model.split("@")[0] == candidate.resource_name
            if same_model and str(dm.model_version_id) == candidate.version_id:
                ours = dm.id
            else:
                others[dm.id] = str(dm.model_version_id)
        return ours, others

    def _deploy_model(self, endpoint: Any, candidate: ModelVersion, share: int) -> None:
        aiplatform = self.clients.aiplatform()
        from google.api_core import exceptions

        model = aiplatform.Model(candidate.resource_name, version=candidate.version_id)
        before = dict(endpoint.gca_resource.traffic_split)
        try:
            with self.waiting(f"Waiting for version {candidate.version_id} to be deployed"):
                endpoint.deploy(
                    model=model,
                    deployed_model_display_name=f"{model.display_name}-v{candidate.version_id}",
                    traffic_percentage=share,
                    machine_type=self.machine_type,
                    min_replica_count=1,
                    max_replica_count=1,
                    # The server writes its prediction log to the bucket: Vertex's default serving
                    # identity may only read the model's artifacts, the jobs account may write there.
                    service_account=self.clients.settings.service_account_email,
                    sync=True,
                )
        except exceptions.GoogleAPICallError as exc:
            # The service leaves the endpoint as it was; say so only after checking.
            endpoint._sync_gca_resource()
            ours, _ = self._split(endpoint, candidate)
            after = dict(endpoint.gca_resource.traffic_split)
            if ours is not None or after != before:
                self._restore(endpoint, before, ours)
            raise ReleaseError(
                f"version {candidate.version_id} could not be deployed: {explain(exc, 'deploying').args[0]}; "
                "rolled back: the endpoint keeps its previous traffic split "
                f"{before or '(nothing deployed)'}"
            ) from exc

    def smoke_test(
        self, endpoint: Any, deployed_id: str, images: Sequence[SmokeImage], policy: SmokePolicy
    ) -> SmokeReport:
        """Send real test images through the endpoint until the candidate answered each of them."""
        from google.api_core import exceptions

        report = SmokeReport()
        split = dict(endpoint.gca_resource.traffic_split)
        share = max(1, int(split.get(deployed_id, 0)))
        # Enough requests for the canary's share to see every image, with a margin for chance.
        budget = len(images) * math.ceil(100 / share) * 3
        while report.answers < len(images) and report.requests < budget:
            image = images[report.answers]
            start = time.perf_counter()
            report.requests += 1
            try:
                response = endpoint.predict(instances=[instance(image.png)])
            except exceptions.GoogleAPICallError as exc:
                report.problems.append(f"request {report.requests} failed: {explain(exc, 'predict').args[0]}")
                break
            elapsed = (time.perf_counter() - start) * 1000
            problem = _check_prediction(response.predictions)
            if response.deployed_model_id != deployed_id:
                if problem:
                    report.problems.append(f"the previous model answered badly: {problem}")
                    break
                continue
            report.answers += 1
            report.latencies_ms.append(elapsed)
            if problem:
                report.problems.append(f"the candidate answered badly: {problem}")
                break
            report.correct += response.predictions[0]["label"] == image.label
        if not report.problems:
            if report.answers < len(images):
                report.problems.append(
                    f"the candidate answered {report.answers} of {report.requests} requests: "
                    "is its traffic share applied?"
                )
            elif report.correct < policy.min_correct * report.answers:
                report.problems.append(
                    f"{report.correct}/{report.answers} test images classified right, under "
                    f"{policy.min_correct:.0%}"
                )
            elif report.p95_ms > policy.max_p95_ms:
                report.problems.append(f"p95 latency {report.p95_ms:.0f} ms over {policy.max_p95_ms:.0f} ms")
        return report

    def _promote(self, endpoint: Any, candidate: ModelVersion, ours: str, others: dict[str, str]) -> None:
        from google.api_core import exceptions

        try:
            if others:
                self.progress(f"Promoting version {candidate.version_id}: 100% of the traffic")
                if int(dict(endpoint.gca_resource.traffic_split).get(ours, 0)) != 100:
                    endpoint.update(traffic_split={ours: 100, **{dm: 0 for dm in others}})
                for dm_id, version in others.items():
                    self.progress(f"Undeploying version {version}")
                    endpoint.undeploy(deployed_model_id=dm_id)
        except exceptions.GoogleAPICallError as exc:
            raise explain(exc, "promoting the candidate (run `edge deploy` again to finish)") from exc
        previous = self.registry.get(PRODUCTION)
        if previous is not None and previous.version_id != candidate.version_id:
            self.registry.move_aliases(previous, (PREVIOUS,))
        self._promote_aliases(candidate)

    def _promote_aliases(self, candidate: ModelVersion) -> None:
        current = self.registry.get(candidate.version_id) or candidate
        self.registry.move_aliases(current, (PRODUCTION, "default"))
        # Promoted, it is no longer a candidate: `candidate` waits for the next registered model.
        self.registry.remove_aliases(current, (CANDIDATE,))

    def _roll_back(self, endpoint: Any, ours: str, others: dict[str, str]) -> None:
        from google.api_core import exceptions

        try:
            if others:
                self.progress("Rolling back: all the traffic to the previous model")
                current = dict(endpoint.gca_resource.traffic_split)
                back = {dm: int(current.get(dm, 0)) for dm in others}
                total = sum(back.values())
                if total == 0:
                    back = {next(iter(others)): 100}
                else:
                    scaled = {dm: v * 100 // total for dm, v in back.items()}
                    scaled[max(scaled, key=lambda k: scaled[k])] += 100 - sum(scaled.values())
                    back = scaled
                endpoint.update(traffic_split={**back, ours: 0})
            self.progress("Undeploying the candidate")
            endpoint.undeploy(deployed_model_id=ours)
        except exceptions.GoogleAPICallError as exc:
            raise explain(exc, "rolling back (run `edge endpoint rollback` to finish)") from exc

    def _restore(self, endpoint: Any, before: dict[str, int], stray: str | None) -> None:
        if before:
            endpoint.update(traffic_split={**before, **({stray: 0} if stray else {})})
        if stray:
            endpoint.undeploy(deployed_model_id=stray)

    # --- by hand ---------------------------------------------------------------------------------
    def rollback(self) -> str:
        """Return to the previous model: end a canary, or redeploy the `previous` version."""
        endpoint = self.find_endpoint()
        if endpoint is None:
            raise CloudError(f"no endpoint named {self.clients.settings.endpoint_name}: nothing to roll back")
        production = self.registry.get(PRODUCTION)
        deployed = {dm.id: str(dm.model_version_id) for dm in endpoint.gca_resource.deployed_models}
        if production is not None and len(deployed) > 1 and production.version_id in deployed.values():
            keep = next(dm for dm, v in deployed.items() if v == production.version_id)
            for dm_id, version in deployed.items():
                if dm_id != keep:
                    self._roll_back(endpoint, dm_id, {keep: production.version_id})
                    self.progress(f"Undeployed version {version}")
            return f"the canary was ended: version {production.version_id} serves all the traffic"
        previous = self.registry.get(PREVIOUS)
        if previous is None:
            raise CloudError("no version has the `previous` alias: there is nothing to roll back to")
        current_ids = set(deployed)
        self._deploy_model(endpoint, previous, 100)
        endpoint._sync_gca_resource()
        for dm_id in current_ids:
            endpoint.undeploy(deployed_model_id=dm_id)
        if production is not None:
            self.registry.move_aliases(production, (PREVIOUS,))
        self._promote_aliases(previous)
        return f"version {previous.version_id} serves all the traffic again"

    def predict(self, png: bytes) -> Any:
        endpoint = self.find_endpoint()
        if endpoint is None:
            name = self.clients.settings.endpoint_name
            raise CloudError(f"no endpoint named {name}: run `edge deploy` first")
        from google.api_core import exceptions

        try:
            return endpoint.predict(instances=[instance(png)])
        except exceptions.GoogleAPICallError as exc:
            raise explain(exc, "predicting through the endpoint") from exc


def _check_prediction(predictions: Any) -> str | None:
    """None when the answer has the model server's shape; else what is wrong with it."""
    try:
        first = predictions[0]
        label = first["label"]
        probabilities = dict(first["probabilities"])
    except (IndexError, KeyError, TypeError):
        return f"unexpected answer {str(predictions)[:200]}"
    if label not in CLASS_NAMES:
        return f"unknown class {label!r}"
    total = sum(float(v) for v in probabilities.values())
    if len(probabilities) != len(CLASS_NAMES) or not 0.98 <= total <= 1.02:
        return f"probabilities do not cover the {len(CLASS_NAMES)} classes (sum {total:.3f})"
    return None
