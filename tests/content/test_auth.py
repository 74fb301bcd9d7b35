from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest

from content.auth import (
    Authenticator,
    Credentials,
    load_docker_config,
    parse_challenges,
    repository_scope,
)
from content.errors import InvalidArgument, Unauthorized


def test_parse_bearer_and_basic_challenges() -> None:
    [c] = parse_challenges('Bearer realm="https://auth.example/token",service="reg",'
                           'scope="repository:a/b:pull,push"')
    assert c.scheme == "bearer"
    assert c.params == {"realm": "https://auth.example/token", "service": "reg",
                        "scope": "repository:a/b:pull,push"}
    both = parse_challenges('Basic realm="x y", Bearer realm="r",error="invalid_token"')
    assert [c.scheme for c in both] == ["basic", "bearer"]
    assert both[0].params == {"realm": "x y"}
    assert both[1].params["error"] == "invalid_token"
    assert parse_challenges("") == []


def test_docker_config_auth_and_username_forms(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {
        "127.0.0.1:5000": {"auth": base64.b64encode(b"alice:s3:cret").decode()},
        "https://index.docker.io/v1/": {"username": "bob", "password": "pw"},
        "http://other.example:8080": {"identitytoken": "refresh-me"},
        "empty.example": {},
    }}))
    creds = load_docker_config(path)
    assert creds == {"127.0.0.1:5000": Credentials("alice", "s3:cret"),
                     "docker.io": Credentials("bob", "pw"),
                     "other.example:8080": Credentials("<token>", "refresh-me")}
    assert creds["other.example:8080"].identity_token == "refresh-me"
    assert load_docker_config(tmp_path / "missing.json") == {}
    path.write_text(json.dumps({"auths": {"h": {"auth": "!!notbase64"}}}))
    with pytest.raises(InvalidArgument, match=r"auths\.h\.auth"):
        load_docker_config(path)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def token_transport(seen: list[httpx.Request], expires_in: int | None = 120,
                    status: int = 200) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body: dict[str, object] = {"token": f"tok{len(seen)}"}
        if expires_in is not None:
            body["expires_in"] = expires_in
        return httpx.Response(status, json=body)

    return httpx.MockTransport(handler)


def challenge_401() -> httpx.Response:
    return httpx.Response(401, headers={
        "WWW-Authenticate": 'Bearer realm="http://auth.test/token",service="reg"'})


async def test_bearer_token_fetched_cached_and_renewed_after_expiry() -> None:
    seen: list[httpx.Request] = []
    clock = Clock()
    async with httpx.AsyncClient(transport=token_transport(seen)) as client:
        auth = Authenticator(client, {"reg.test": Credentials("u", "p")}, clock=clock)
        scopes = [repository_scope("a/b")]
        assert await auth.headers("reg.test", scopes) == {}  # no challenge yet
        assert await auth.on_unauthorized("reg.test", scopes, challenge_401())
        assert await auth.headers("reg.test", scopes) == {"Authorization": "Bearer tok1"}
        assert len(seen) == 1
        request = seen[0]
        assert request.url.params.get_list("scope") == ["repository:a/b:pull"]
        assert request.url.params["service"] == "reg"
        assert request.headers["authorization"] == Credentials("u", "p").basic_header()
        clock.now += 60
        assert await auth.headers("reg.test", scopes) == {"Authorization": "Bearer tok1"}
        clock.now += 61  # past expires_in=120
        assert await auth.headers("reg.test", scopes) == {"Authorization": "Bearer tok2"}
        # another scope is another token
        push = [repository_scope("a/b", push=True)]
        assert await auth.headers("reg.test", push) == {"Authorization": "Bearer tok3"}
        assert seen[2].url.params["scope"] == "repository:a/b:pull,push"


async def test_default_ttl_is_60s_and_401_drops_the_token() -> None:
    seen: list[httpx.Request] = []
    clock = Clock()
    async with httpx.AsyncClient(transport=token_transport(seen, expires_in=None)) as client:
        auth = Authenticator(client, {}, clock=clock)
        scopes = ["repository:x:pull"]
        await auth.on_unauthorized("r", scopes, challenge_401())
        assert await auth.headers("r", scopes) == {"Authorization": "Bearer tok1"}
        clock.now += 50
        assert await auth.headers("r", scopes) == {"Authorization": "Bearer tok1"}
        clock.now += 11
        assert await auth.headers("r", scopes) == {"Authorization": "Bearer tok2"}
        assert "authorization" not in seen[0].headers  # anonymous
        await auth.on_unauthorized("r", scopes, challenge_401())  # refused: refresh
        assert await auth.headers("r", scopes) == {"Authorization": "Bearer tok3"}


async def test_basic_challenge_uses_credentials_only_when_we_have_them() -> None:
    async with httpx.AsyncClient() as client:
        auth = Authenticator(client, {"r": Credentials("u", "p")})
        basic = httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="x"'})
        assert await auth.on_unauthorized("r", [], basic)
        expected = {"Authorization": Credentials("u", "p").basic_header()}
        assert await auth.headers("r", []) == expected
        assert not await auth.on_unauthorized("other", [], basic)


async def test_token_server_refusal_is_unauthorized() -> None:
    seen: list[httpx.Request] = []
    async with httpx.AsyncClient(transport=token_transport(seen, status=401)) as client:
        auth = Authenticator(client, {"r": Credentials("alice", "bad")})
        await auth.on_unauthorized("r", ["s"], challenge_401())
        with pytest.raises(Unauthorized, match=r"registry r: token server .* alice"):
            await auth.headers("r", ["s"])
