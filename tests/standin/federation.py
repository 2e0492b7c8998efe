"""Keyless access as CI uses it: the Security Token Service and the IAM Service Account Credentials API.

`SecurityTokenService` (`POST /v1/token`, RFC 8693 token exchange, as google-auth's
`external_account` credentials send it) takes an OIDC token for a Workload Identity Federation
provider of this cloud and answers a federated access token, as STS does
(https://cloud.google.com/iam/docs/reference/sts/rest/v1/TopLevel/token): the audience must name a
known provider, the token its issuer and one of its allowed audiences (with none configured, the
provider's own name, with or without `https:`:
https://cloud.google.com/iam/docs/reference/rest/v1/projects.locations.workloadIdentityPools.providers#oidc)
and not be expired; the provider's attribute mapping is applied (`assertion.sub`,
`assertion['claim']`), `google.subject` may hold at most 127 bytes
(https://cloud.google.com/iam/docs/workload-identity-federation#mapping, attribute mapping
limits), and the attribute condition (`attribute.x=='value'`) must hold. CircleCI's `sub`
(`org/<uuid>/project/<uuid>/user/<uuid>/vcs-origin/<repository>/vcs-ref/<ref>`) is longer than
that, so a provider mapping `google.subject=assertion.sub` refuses every CircleCI job. The
federated principal is
`principal://iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/POOL/subject/SUB`,
member of `principalSet://.../attribute.NAME/VALUE` for each mapped attribute.

`IamCredentials` (`POST /v1/projects/-/serviceAccounts/EMAIL:generateAccessToken`) answers a token
of the service account to a caller holding `iam.serviceAccounts.getAccessToken` on it
(roles/iam.workloadIdentityUser or roles/iam.serviceAccountTokenCreator).

The token's signature is verified as Google verifies an OIDC provider's tokens: RS256 with the key its
header's `kid` names, from the JWK Set at the `jwks_uri` of the issuer's discovery document
(`<issuer>/.well-known/openid-configuration`). Stand-in-only difference: an issuer's public address
(https://oidc.circleci.com/org/...) cannot be reached here, so `trust(issuer, url)` says where its
stand-in answers (tests/standin/oidc.py); a token of an issuer nobody said that of is refused.
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from tests.standin.access import API_NAMES, Access, Project
from tests.standin.oidc import public_keys
from tests.standin.server import ApiError, Reply, Request, StandIn

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
SUBJECT_TYPES = ("urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token")
SUBJECT_LIMIT = 127


@dataclass
class Provider:
    project: Project
    pool: str
    provider: str
    issuer: str
    allowed_audiences: list[str]
    mapping: dict[str, str]
    condition: str | None = None
    disabled: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return (
            f"projects/{self.project.number}/locations/global/workloadIdentityPools/{self.pool}"
            f"/providers/{self.provider}"
        )

    @property
    def pool_name(self) -> str:
        return f"projects/{self.project.number}/locations/global/workloadIdentityPools/{self.pool}"


def _oauth_error(error: str, description: str) -> Reply:
    return Reply({"error": error, "error_description": description}, 400)


def _claims(token: str) -> dict[str, Any]:
    try:
        payload = token.split(".")[1]
        return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))
    except (IndexError, ValueError) as exc:
        raise ValueError("the subject token is not a JWT") from exc


def _header(token: str) -> dict[str, Any]:
    try:
        part = token.split(".")[0]
        return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))
    except (IndexError, ValueError) as exc:
        raise ValueError("the subject token is not a JWT") from exc


def _fetch_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return dict(json.loads(answer.read()))


def _evaluate(expression: str, claims: dict[str, Any]) -> Any:
    """`assertion.sub` or `assertion['a.b/c']`: the subset of CEL the README's mapping uses."""
    expression = expression.strip()
    match = re.fullmatch(r"assertion\.(\w+)", expression) or re.fullmatch(
        r"assertion\[['\"]([^'\"]+)['\"]\]", expression
    )
    if not match:
        raise ValueError(f"the stand-in cannot evaluate the mapping {expression!r}")
    return claims.get(match.group(1))


class SecurityTokenService:
    def __init__(self, standin: StandIn, access: Access) -> None:
        self.access = access
        self.providers: dict[str, Provider] = {}
        self.lifetime = 3600  # seconds a federated token lives (a test shortens the hour)
        # Where each issuer's stand-in answers (its discovery document and keys), by issuer URI.
        self.issuer_urls: dict[str, str] = {}
        standin.route("POST", "/v1/token")(self.exchange)

    def trust(self, issuer: str, url: str) -> None:
        """Reach `issuer`'s `/.well-known/openid-configuration` at `url` (its stand-in) instead."""
        self.issuer_urls[issuer] = url.rstrip("/")

    def verify_signature(self, token: str, issuer: str) -> str | None:
        """Why the token's signature does not verify against the issuer's published keys, or None."""
        header = _header(token)
        if header.get("alg") != "RS256":
            return f"The ID Token is signed with {header.get('alg')!r}; only RS256 is supported."
        url = self.issuer_urls.get(issuer)
        if url is None:
            return f"Unable to fetch the OpenID configuration of the issuer {issuer!r}."
        try:
            jwks = _fetch_json(str(_fetch_json(f"{url}/.well-known/openid-configuration")["jwks_uri"]))
        except (OSError, KeyError, ValueError):
            return f"Unable to fetch the signing keys of the issuer {issuer!r}."
        key = public_keys(jwks).get(str(header.get("kid")))
        if key is None:
            return "Invalid JWT Signature: no key of the issuer has the token's kid."
        signing_input, _, signature = token.rpartition(".")
        try:
            key.verify(
                base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)),
                signing_input.encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except (InvalidSignature, ValueError):
            return "Invalid JWT Signature."
        return None

    def add_provider(self, provider: Provider) -> Provider:
        self.providers[provider.name] = provider
        return provider

    def exchange(self, request: Request) -> Reply:
        form = dict(parse_qsl(request.raw_body.decode()))
        if not form and isinstance(request.body, dict):
            form = {re.sub(r"([A-Z])", r"_\1", k).lower(): v for k, v in request.body.items()}
        if form.get("grant_type") != TOKEN_EXCHANGE:
            return _oauth_error(
                "unsupported_grant_type", f"Unsupported grant type {form.get('grant_type')!r}."
            )
        if form.get("subject_token_type") not in SUBJECT_TYPES:
            return _oauth_error("invalid_request", "Invalid subject token type.")
        audience = form.get("audience", "").removeprefix("//iam.googleapis.com/")
        provider = self.providers.get(audience)
        if provider is None or provider.disabled:
            return _oauth_error(
                "invalid_target", f"The target service indicated by the audience {audience!r} is invalid."
            )
        token = form.get("subject_token", "")
        try:
            claims = _claims(token)
            if claims.get("iss") != provider.issuer:
                return _oauth_error(
                    "invalid_grant",
                    f"The issuer in ID Token {claims.get('iss')!r} does not match the expected ones.",
                )
            refused = self.verify_signature(token, provider.issuer)
            if refused:
                return _oauth_error("invalid_grant", refused)
            audiences = claims.get("aud") if isinstance(claims.get("aud"), list) else [claims.get("aud")]
            default = [f"https://iam.googleapis.com/{provider.name}", f"//iam.googleapis.com/{provider.name}"]
            if not set(audiences) & set(provider.allowed_audiences or default):
                return _oauth_error(
                    "invalid_grant", "The audience in ID Token does not match the expected audience."
                )
            if float(claims.get("exp", 0)) < time.time():
                return _oauth_error("invalid_grant", "ID Token issued at ... is stale to sign-in.")
            attributes = {key: _evaluate(expr, claims) for key, expr in provider.mapping.items()}
        except ValueError as exc:
            return _oauth_error("invalid_grant", str(exc))
        subject = str(attributes.get("google.subject") or "")
        if not subject:
            return _oauth_error("invalid_grant", "The mapped attribute google.subject is empty.")
        if len(subject.encode()) > SUBJECT_LIMIT:
            return _oauth_error(
                "invalid_request",
                f"The size of mapped attribute google.subject exceeds the {SUBJECT_LIMIT} bytes limit. "
                "Either modify your attribute mapping or the incoming assertion to produce a mapped "
                "attribute that is less than 127 bytes.",
            )
        if provider.condition:
            match = re.fullmatch(r"\s*attribute\.(\w+)\s*==\s*['\"]([^'\"]*)['\"]\s*", provider.condition)
            if not match:
                return _oauth_error("invalid_grant", "The stand-in cannot evaluate the attribute condition.")
            if str(attributes.get(f"attribute.{match.group(1)}")) != match.group(2):
                return _oauth_error(
                    "unauthorized_client", "The given credential is rejected by the attribute condition."
                )
        principal = f"principal://iam.googleapis.com/{provider.pool_name}/subject/{subject}"
        sets = {
            f"principalSet://iam.googleapis.com/{provider.pool_name}/{key}/{value}"
            for key, value in attributes.items()
            if key.startswith("attribute.") and value is not None
        }
        self.access.memberships[principal] = sets
        return Reply(
            {
                "access_token": self.access.issue_token(principal),
                "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                "token_type": "Bearer",
                "expires_in": self.lifetime,
            }
        )


class IamCredentials:
    def __init__(self, standin: StandIn, access: Access, accounts: dict[str, dict[str, Any]]) -> None:
        self.access = access
        self.accounts = accounts
        self.lifetime = 3600  # seconds a service account's token lives (Google's default: an hour)
        standin.route("POST", "/v1/projects/{project}/serviceAccounts/{email}:generateAccessToken")(
            self.generate
        )

    def generate(self, request: Request) -> dict[str, Any]:
        api = API_NAMES["iamcredentials"]
        principal = self.access.principal(request)
        request.principal = principal
        email = request.params["email"]
        account = self.accounts.get(email)
        owner = self.access.find(account["projectId"]) if account else None
        if account is None or owner is None:
            raise ApiError(404, f"Not found; Gaia id not found for email {email}")
        self.access.require_enabled(owner, api)
        resource = f"projects/{owner.project_id}/serviceAccounts/{email}"
        self.access.require(
            principal,
            "iam.serviceAccounts.getAccessToken",
            [f"projects/{owner.project_id}", resource],
            f"//iam.googleapis.com/{resource}",
            api,
        )
        expires = datetime.now(UTC) + timedelta(seconds=self.lifetime)
        return {
            "accessToken": self.access.issue_token(f"serviceAccount:{email}"),
            "expireTime": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
