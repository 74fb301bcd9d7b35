"""The few CRI v1 messages the image-service proxy reads: ``PullImageRequest`` and its auth.

Field numbers are those of the public ``k8s.io/cri-api`` ``pkg/apis/runtime/v1/api.proto``::

    PullImageRequest { ImageSpec image = 1; AuthConfig auth = 2;
                       PodSandboxConfig sandbox_config = 3; }
    ImageSpec        { string image = 1; map<string,string> annotations = 2; ... }
    AuthConfig       { string username = 1; string password = 2; string auth = 3;
                       string server_address = 4; string identity_token = 5;
                       string registry_token = 6; }

The proxy forwards every call as the bytes it received, so it needs no other message: fields
it does not declare here are skipped when parsing and never re-encoded. The descriptors live
in a private pool, built in code (no generated module, no build step), because the
``runtime.v1`` package may also be defined in the default pool of the same process (the
tests' own CRI client is).

Must not hold credentials beyond the call that parses them: the caller decides what to keep.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from snapfs.errors import InvalidArgument

IMAGE_SERVICE = "runtime.v1.ImageService"
PULL_IMAGE = f"/{IMAGE_SERVICE}/PullImage"

_STRING = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
_MESSAGE = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
_OPTIONAL = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL


def _message(file: descriptor_pb2.FileDescriptorProto, name: str,
             fields: list[tuple[str, int, str]]) -> None:
    msg = file.message_type.add(name=name)
    for field_name, number, kind in fields:
        if kind == "string":
            msg.field.add(name=field_name, number=number, type=_STRING, label=_OPTIONAL)
        else:
            msg.field.add(name=field_name, number=number, type=_MESSAGE, label=_OPTIONAL,
                          type_name=f".runtime.v1.{kind}")


def _build() -> Any:
    file = descriptor_pb2.FileDescriptorProto(name="snapfs_cri_pull.proto",
                                              package="runtime.v1", syntax="proto3")
    _message(file, "ImageSpec", [("image", 1, "string")])
    _message(file, "AuthConfig", [("username", 1, "string"), ("password", 2, "string"),
                                  ("auth", 3, "string"), ("server_address", 4, "string"),
                                  ("identity_token", 5, "string"),
                                  ("registry_token", 6, "string")])
    _message(file, "PullImageRequest", [("image", 1, "ImageSpec"), ("auth", 2, "AuthConfig")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("runtime.v1.PullImageRequest"))


_PullImageRequest = _build()


@dataclass(frozen=True, slots=True)
class PullAuth:
    """kubelet's credentials for one pull, as CRI's AuthConfig carries them."""

    username: str = ""
    password: str = field(default="", repr=False)
    server_address: str = ""
    identity_token: str = field(default="", repr=False)
    registry_token: str = field(default="", repr=False)

    @property
    def kind(self) -> str:
        """What was given, for a log line that must not show the secret."""
        if self.identity_token:
            return "identity token"
        if self.registry_token:
            return "registry token"
        return "username/password" if self.username else "nothing"


@dataclass(frozen=True, slots=True)
class PullImage:
    image: str
    auth: PullAuth | None  # None: the request carried no usable credentials


def _auth(msg: Any) -> PullAuth | None:
    username, password = str(msg.username), str(msg.password)
    if not username and msg.auth:
        # "auth" is base64 of user:password, as in a docker config.json (containerd's rule:
        # the username and password fields win when set).
        try:
            username, sep, password = base64.b64decode(msg.auth).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise InvalidArgument("PullImage auth.auth: not base64 of user:password") from None
        if not sep:
            raise InvalidArgument("PullImage auth.auth: not base64 of user:password")
    auth = PullAuth(username=username, password=password,
                    server_address=str(msg.server_address),
                    identity_token=str(msg.identity_token),
                    registry_token=str(msg.registry_token))
    return None if auth.kind == "nothing" else auth


def parse_pull_image(data: bytes) -> PullImage:
    """The image and credentials of a serialized ``PullImageRequest``."""
    msg = _PullImageRequest()
    try:
        msg.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError has no stable import path
        raise InvalidArgument(f"PullImage: not a PullImageRequest: {exc}") from None
    return PullImage(str(msg.image.image), _auth(msg.auth) if msg.HasField("auth") else None)


def encode_pull_image(image: str, **auth: str) -> bytes:
    """A serialized ``PullImageRequest`` (for tests of the proxy without kubelet)."""
    msg = _PullImageRequest()
    msg.image.image = image
    for key, value in auth.items():
        setattr(msg.auth, key, value)
    return bytes(msg.SerializeToString())


__all__ = ["IMAGE_SERVICE", "PULL_IMAGE", "PullAuth", "PullImage", "encode_pull_image",
           "parse_pull_image"]
