"""CircleCI's side of keyless CI: an OpenID Connect issuer that signs its tokens, and the `circleci`
command a job runs to get one.

`OidcIssuer` stands in for `https://oidc.circleci.com/org/<ORG_ID>`: it holds an RSA key, signs
tokens with it (RS256, the key's id in the header's `kid`, as CircleCI does) and serves what a
verifier fetches, on 127.0.0.1: the discovery document at `/.well-known/openid-configuration` and
its `jwks_uri`, the public keys as a JWK Set (https://openid.net/specs/openid-connect-discovery-1_0.html,
RFC 7517). Google's STS verifies a token's signature against exactly these
(https://cloud.google.com/iam/docs/workload-identity-federation-with-other-providers).

`write_circleci_command` writes a `circleci` executable whose `circleci run oidc get [--claims
'{"aud": ...}']` prints a fresh token signed by the issuer, with the claims CircleCI puts in
`$CIRCLE_OIDC_TOKEN_V2` (https://circleci.com/docs/openid-connect-tokens/): `iss`, `aud` (the
organization id unless `--claims` chooses one), `sub` in its long v2 form, `iat`, `exp` an hour
later, `oidc.circleci.com/project-id`, `oidc.circleci.com/vcs-origin` and `oidc.circleci.com/vcs-ref`.
The command runs the interpreter of these tests, which has `cryptography` (google-auth's own
dependency), and appends each token's `iat` to a `minted` file beside it.
"""

from __future__ import annotations

import base64
import json
import secrets
import sys
import uuid
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.standin.server import Request, StandIn

CIRCLECI_ISSUER = "https://oidc.circleci.com/org/{org}"
# CircleCI's `sub` for $CIRCLE_OIDC_TOKEN_V2: three UUIDs, the repository and the ref (> 127 bytes).
CIRCLECI_SUB = (
    f"org/{uuid.UUID(int=1)}/project/{uuid.UUID(int=2)}/user/{uuid.UUID(int=3)}"
    "/vcs-origin/github.com/edge-org/edge/vcs-ref/refs/heads/main"
)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _integer(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def sign(key: rsa.RSAPrivateKey, kid: str, claims: dict[str, Any]) -> str:
    """A JWS in compact form: header and claims, signed with RSASSA-PKCS1-v1_5 and SHA-256 (RS256)."""
    header = {"alg": "RS256", "typ": "JWT", "kid": kid}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(signature)}"


class OidcIssuer(StandIn):
    """The issuer `issuer` (a public URI), answering on 127.0.0.1 with its discovery document and keys."""

    def __init__(self, issuer: str) -> None:
        super().__init__("oidc")
        self.issuer = issuer
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = secrets.token_hex(8)
        self.route("GET", "/.well-known/openid-configuration")(self._discovery)
        self.route("GET", "/.well-known/jwks-pub.json")(lambda _request: self.jwks())

    def _discovery(self, request: Request) -> dict[str, Any]:
        # The keys' address is this server's: a verifier that found the document finds the keys.
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{self.url}/.well-known/jwks-pub.json",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    def jwks(self) -> dict[str, Any]:
        numbers = self.key.public_key().public_numbers()
        key = {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid}
        return {"keys": [{**key, "n": _integer(numbers.n), "e": _integer(numbers.e)}]}

    def mint(self, claims: dict[str, Any]) -> str:
        """A token with these claims, signed by this issuer's key."""
        return sign(self.key, self.kid, claims)

    def private_key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def public_keys(jwks: dict[str, Any]) -> dict[str, rsa.RSAPublicKey]:
    """The RSA keys of a JWK Set, by key id."""

    def integer(text: str) -> int:
        return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")

    return {
        str(key.get("kid")): rsa.RSAPublicNumbers(integer(key["e"]), integer(key["n"])).public_key()
        for key in jwks.get("keys", [])
        if key.get("kty") == "RSA"
    }


CIRCLECI_COMMAND = """#!{python}
# CircleCI's `circleci run oidc get [--claims '{{"aud": ...}}']`: prints a fresh OIDC token, signed.
import base64, json, os, sys, time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

args = sys.argv[1:]
if args[:3] != ["run", "oidc", "get"]:
    sys.exit("this circleci stand-in knows `run oidc get` only")
claims = json.loads(args[args.index("--claims") + 1]) if "--claims" in args else {{}}
now = int(time.time())
payload = {{
    "iss": {issuer!r},
    "aud": claims.get("aud", {org!r}),
    "sub": {sub!r},
    "iat": now,
    "exp": now + int(os.environ.get("CIRCLECI_TOKEN_SECONDS", "3600")),
    "oidc.circleci.com/project-id": {project!r},
    "oidc.circleci.com/vcs-origin": "github.com/edge-org/edge",
    "oidc.circleci.com/vcs-ref": "refs/heads/main",
}}
part = lambda data: base64.urlsafe_b64encode(data).decode().rstrip("=")
signing_input = part(json.dumps({{"alg": "RS256", "typ": "JWT", "kid": {kid!r}}}).encode()) + "." + part(
    json.dumps(payload).encode()
)
with open({key_file!r}, "rb") as pem:
    key = serialization.load_pem_private_key(pem.read(), password=None)
signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "minted"), "a") as log:
    log.write(str(now) + "\\n")
print(signing_input + "." + part(signature))
"""


def write_circleci_command(
    bin_dir: Path, issuer: OidcIssuer, org: str, project: str, sub: str = CIRCLECI_SUB
) -> Path:
    """Write `bin_dir/circleci` (and the issuer's key beside it, readable by its owner only)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    key_file = bin_dir / "circleci-oidc-key.pem"
    key_file.write_bytes(issuer.private_key_pem())
    key_file.chmod(0o600)
    command = bin_dir / "circleci"
    command.write_text(
        CIRCLECI_COMMAND.format(
            python=sys.executable,
            issuer=issuer.issuer,
            org=org,
            sub=sub,
            project=project,
            kid=issuer.kid,
            key_file=str(key_file),
        )
    )
    command.chmod(0o755)
    return command
