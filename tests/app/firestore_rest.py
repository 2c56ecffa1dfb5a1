"""A tiny Firestore REST client for rules tests: every request carries exactly the token we choose."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import httpx

OWNER = "owner"  # the emulator's bypass token: seeding and checking, rules not applied


def unsigned_id_token(uid: str, project: str, **claims: Any) -> str:
    """An ``alg: none`` Firebase ID token: the emulator evaluates rules with it as ``request.auth``."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": f"https://securetoken.google.com/{project}",
        "aud": project,
        "sub": uid,
        "user_id": uid,
        "iat": now,
        "auth_time": now,
        "exp": now + 3600,
        "firebase": {"sign_in_provider": "google.com", "identities": {}},
        **claims,
    }

    def b64(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(payload)}."


def value(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"booleanValue": v}
    if isinstance(v, int):
        return {"integerValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, str):
        return {"stringValue": v}
    if v is None:
        return {"nullValue": None}
    if isinstance(v, dict):
        return {"mapValue": {"fields": {k: value(x) for k, x in v.items()}}}
    raise TypeError(type(v))


def fields(doc: dict[str, Any]) -> dict[str, Any]:
    return {"fields": {k: value(v) for k, v in doc.items()}}


def plain(v: dict[str, Any]) -> Any:
    if "integerValue" in v:
        return int(v["integerValue"])
    if "mapValue" in v:
        return {k: plain(x) for k, x in v["mapValue"].get("fields", {}).items()}
    return next(iter(v.values()))


class Firestore:
    """REST calls against the emulator for one project; ``token`` None = unauthenticated."""

    def __init__(self, base_url: str, project: str) -> None:
        self.project = project
        self.root = f"{base_url}/v1/projects/{project}/databases/(default)/documents"
        self.http = httpx.Client(timeout=30)

    def close(self) -> None:
        self.http.close()

    def _headers(self, token: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"} if token is not None else {}

    def token(self, uid: str, **claims: Any) -> str:
        return unsigned_id_token(uid, self.project, **claims)

    def create(self, token: str | None, collection: str, doc_id: str, doc: dict[str, Any]) -> httpx.Response:
        return self.http.post(
            f"{self.root}/{collection}",
            params={"documentId": doc_id},
            json=fields(doc),
            headers=self._headers(token),
        )

    def set(self, token: str | None, path: str, doc: dict[str, Any]) -> httpx.Response:
        return self.http.patch(f"{self.root}/{path}", json=fields(doc), headers=self._headers(token))

    def update(self, token: str | None, path: str, doc: dict[str, Any]) -> httpx.Response:
        mask = [("updateMask.fieldPaths", k) for k in doc]
        return self.http.patch(
            f"{self.root}/{path}",
            params=[*mask, ("currentDocument.exists", "true")],
            json=fields(doc),
            headers=self._headers(token),
        )

    def delete(self, token: str | None, path: str) -> httpx.Response:
        return self.http.delete(f"{self.root}/{path}", headers=self._headers(token))

    def get(self, token: str | None, path: str) -> httpx.Response:
        return self.http.get(f"{self.root}/{path}", headers=self._headers(token))

    def doc(self, path: str) -> dict[str, Any] | None:
        """The document as plain values, read with the bypass token (None if absent)."""
        resp = self.get(OWNER, path)
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        return {k: plain(v) for k, v in resp.json().get("fields", {}).items()}

    def list(self, token: str | None, collection: str) -> httpx.Response:
        return self.http.get(f"{self.root}/{collection}", headers=self._headers(token))

    def query(self, token: str | None, collection: str, field: str, equals: Any) -> httpx.Response:
        body = {
            "structuredQuery": {
                "from": [{"collectionId": collection}],
                "where": {
                    "fieldFilter": {"field": {"fieldPath": field}, "op": "EQUAL", "value": value(equals)}
                },
            }
        }
        return self.http.post(f"{self.root}:runQuery", json=body, headers=self._headers(token))


def new_project() -> str:
    return f"rules-{uuid.uuid4().hex[:10]}"
