"""The keychain (credentials per repository, in memory) as the authenticator uses it: CRI's
credentials win over config.json for their repository only, a newer pull's credentials are
picked up after a refusal, and a registry token is the bearer token itself."""

from __future__ import annotations

import httpx

from content.auth import Authenticator, repository_scope, scope_repository
from content.credentials import Credentials, StaticCredentials
from content.keychain import FirstOf, Keychain
from tests.content.test_auth import challenge_401, token_transport

BASIC = httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="x"'})


def test_scope_repository() -> None:
    assert scope_repository([repository_scope("a/b", push=True), "repository:c:pull"]) == "a/b"
    assert scope_repository(["registry:catalog:*"]) == ""
    assert scope_repository([]) == ""


async def test_keychain_first_for_its_repository_then_config_json() -> None:
    keychain = Keychain()
    config_json = StaticCredentials({"r": Credentials("file-user", "file-pw")})
    keychain.record("r", "team/app", Credentials("kubelet", "cri-pw"))
    keychain.record("docker.io", "library/busybox", Credentials("hub", "pw"))
    source = FirstOf(keychain, config_json)
    async with httpx.AsyncClient() as client:
        auth = Authenticator(client, source)
        app, other = [repository_scope("team/app")], [repository_scope("team/other")]
        assert await auth.on_unauthorized("r", app, BASIC)
        assert await auth.headers("r", app) == {
            "Authorization": Credentials("kubelet", "cri-pw").basic_header()}
        assert await auth.headers("r", other) == {
            "Authorization": Credentials("file-user", "file-pw").basic_header()}
        # Recorded for docker.io; requests go to its endpoint's name.
        assert await source.get("registry-1.docker.io", "library/busybox") == \
            Credentials("hub", "pw")
        assert await source.get("elsewhere", "team/app") is None

        # A later PullImage brought rotated credentials: used once the old ones are refused.
        keychain.record("r", "team/app", Credentials("kubelet", "rotated"))
        assert await auth.on_unauthorized("r", app, BASIC)
        assert await auth.headers("r", app) == {
            "Authorization": Credentials("kubelet", "rotated").basic_header()}
        keychain.record("r", "team/app", None)  # a pull without credentials
        assert await auth.on_unauthorized("r", app, BASIC)
        assert await auth.headers("r", app) == {
            "Authorization": Credentials("file-user", "file-pw").basic_header()}


async def test_registry_token_is_the_bearer_token_without_a_token_server() -> None:
    seen: list[httpx.Request] = []
    keychain = Keychain()
    keychain.record("r", "team/app", Credentials("", "", registry_token="issued-elsewhere"))
    async with httpx.AsyncClient(transport=token_transport(seen)) as client:
        auth = Authenticator(client, keychain)
        app = [repository_scope("team/app")]
        assert await auth.on_unauthorized("r", app, challenge_401())
        assert await auth.headers("r", app) == {"Authorization": "Bearer issued-elsewhere"}
        assert seen == [] and auth.token_requests == 0
        other = [repository_scope("team/other")]  # not the token's repository: token server
        assert await auth.headers("r", other) == {"Authorization": "Bearer tok1"}
        assert "authorization" not in seen[0].headers
