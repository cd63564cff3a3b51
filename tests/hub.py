"""A stack on a database of choice, with an admin key, and the calls tests make on it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.stack import Stack

ADMIN_KEY = "ahk-admin-" + "a" * 40
MODELS_FILE = Path(__file__).with_name("models.toml")
GENERATIONS = "/api/images/generations"


@dataclass(frozen=True)
class Key:
    id: str
    secret: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.secret}"),)


class Hub:
    """The stack, an admin client, and every secret handed out (to look for in logs)."""

    def __init__(self, stack: Stack, database: str) -> None:
        self.stack = stack
        self.database = database
        self.admin = httpx.Client(base_url=stack.base_url, timeout=60,
                                  headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        self.secrets: list[str] = [ADMIN_KEY]

    @staticmethod
    def env(database_url: str) -> dict[str, str]:
        return {"AIGNE_HUB_DATABASE_URL": database_url, "AIGNE_HUB_ADMIN_API_KEYS": ADMIN_KEY,
                "AIGNE_HUB_MODELS_FILE": str(MODELS_FILE)}

    def create_key(self, name: str = "test key", *, admin: bool = False,
                   **limits: Any) -> Key:
        answer = self.admin.post("/api/admin/keys",
                                 json={"name": name, "admin": admin, "limits": limits})
        assert answer.status_code == 200, answer.text
        key = Key(answer.json()["key"]["id"], answer.json()["secret"])
        self.secrets.append(key.secret)
        return key

    def set_limits(self, key: Key, **limits: Any) -> dict:
        answer = self.admin.put(f"/api/admin/keys/{key.id}/limits", json=limits)
        assert answer.status_code == 200, answer.text
        return answer.json()["key"]

    def get_key(self, key: Key) -> dict:
        answer = self.admin.get(f"/api/admin/keys/{key.id}")
        assert answer.status_code == 200, answer.text
        return answer.json()["key"]

    def generate(self, key: Key, **body: Any) -> httpx.Response:
        return httpx.post(f"{self.stack.base_url}{GENERATIONS}", headers=key.headers,
                          json={"prompt": "a test", "size": "32x32", "model": "local", **body},
                          timeout=60)

    def records(self, key: Key | str, **params: Any) -> list[dict]:
        """Every usage record of a key (or of `-`: all keys), newest first."""
        key_id = key.id if isinstance(key, Key) else key
        records: list[dict] = []
        token = ""
        while True:
            answer = self.admin.get("/api/usage/records", params={
                "key_id": key_id, "page_size": 1000, "page_token": token, **params})
            assert answer.status_code == 200, answer.text
            records += answer.json().get("records", [])
            token = answer.json().get("next_page_token", "")
            if not token:
                return records

    def usage(self, key: Key | str, **params: Any) -> dict:
        key_id = key.id if isinstance(key, Key) else key
        answer = self.admin.get("/api/usage", params={"key_id": key_id, **params})
        assert answer.status_code == 200, answer.text
        return answer.json()

    def close(self) -> None:
        self.admin.close()
