"""A small CRI v1 client for the tests: stubs generated from ``cri_api.proto`` at test time.

``load_cri_api(out_dir)`` runs grpc_tools' protoc into ``out_dir`` (no generated code is
committed) and imports the result once per process: protobuf's default descriptor pool
refuses a second definition of ``runtime.v1``. ``CriClient`` holds the two services kubelet
uses, on containerd's own socket (the CRI plugin serves there), and calls them from worker
threads with grpcio's synchronous stubs, as snapfs's own client does, so a trio test stays
responsive. It must not start or stop containerd (the fixture does).
"""

from __future__ import annotations

import importlib
import sys
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import trio

PROTO = Path(__file__).with_name("cri_api.proto")
CALL_TIMEOUT = 120.0  # a pull on a loaded 2-core box; normal calls take milliseconds

_lock = threading.Lock()
_loaded: CriApi | None = None


@dataclass(frozen=True, slots=True)
class CriApi:
    """The generated modules: messages (``pb2``) and stubs (``grpc``)."""

    pb2: ModuleType
    grpc: ModuleType


def load_cri_api(out_dir: Path) -> CriApi:
    """Generate the stubs into ``out_dir`` and import them (once per process)."""
    global _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        from grpc_tools import protoc  # dev dependency; only the tests need it

        out_dir.mkdir(parents=True, exist_ok=True)
        rc = protoc.main(["grpc_tools.protoc", f"-I{PROTO.parent}", f"--python_out={out_dir}",
                          f"--grpc_python_out={out_dir}", str(PROTO)])
        if rc != 0:
            raise RuntimeError(f"protoc failed on {PROTO} (exit {rc})")
        # The generated grpc module imports its messages by bare name, so the directory
        # must be on sys.path while both are imported; afterwards sys.modules holds them.
        sys.path.insert(0, str(out_dir))
        try:
            _loaded = CriApi(importlib.import_module("cri_api_pb2"),
                             importlib.import_module("cri_api_pb2_grpc"))
        finally:
            sys.path.remove(str(out_dir))
        return _loaded


class CriClient:
    """``runtime.v1.RuntimeService`` and ``ImageService``, on containerd's socket, or the
    image service on ``image_address`` (kubelet's ``--image-service-endpoint``); it owns its
    channels."""

    def __init__(self, api: CriApi, address: str, image_address: str | None = None) -> None:
        self.api = api
        self.pb = api.pb2
        self._channel = grpc.insecure_channel(f"unix://{address}")
        self._image_channel = (grpc.insecure_channel(f"unix://{image_address}")
                               if image_address else self._channel)
        self._runtime = api.grpc.RuntimeServiceStub(self._channel)
        self._images = api.grpc.ImageServiceStub(self._image_channel)

    def close(self) -> None:
        if self._image_channel is not self._channel:
            self._image_channel.close()
        self._channel.close()

    async def _call(self, stub: Any, method: str, request: Any,
                    timeout: float = CALL_TIMEOUT) -> Any:
        return await trio.to_thread.run_sync(
            partial(getattr(stub, method), request, timeout=timeout))

    # -- RuntimeService ---------------------------------------------------------------------

    async def version(self) -> Any:
        return await self._call(self._runtime, "Version", self.pb.VersionRequest(version="v1"))

    async def run_pod_sandbox(self, config: Any) -> str:
        res = await self._call(self._runtime, "RunPodSandbox",
                               self.pb.RunPodSandboxRequest(config=config))
        return str(res.pod_sandbox_id)

    async def stop_pod_sandbox(self, pod_id: str) -> None:
        await self._call(self._runtime, "StopPodSandbox",
                         self.pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))

    async def remove_pod_sandbox(self, pod_id: str) -> None:
        await self._call(self._runtime, "RemovePodSandbox",
                         self.pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))

    async def create_container(self, pod_id: str, config: Any, sandbox_config: Any) -> str:
        res = await self._call(self._runtime, "CreateContainer", self.pb.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=sandbox_config))
        return str(res.container_id)

    async def start_container(self, container_id: str) -> None:
        await self._call(self._runtime, "StartContainer",
                         self.pb.StartContainerRequest(container_id=container_id))

    async def stop_container(self, container_id: str, timeout: int = 0) -> None:
        await self._call(self._runtime, "StopContainer",
                         self.pb.StopContainerRequest(container_id=container_id, timeout=timeout))

    async def remove_container(self, container_id: str) -> None:
        await self._call(self._runtime, "RemoveContainer",
                         self.pb.RemoveContainerRequest(container_id=container_id))

    async def container_status(self, container_id: str) -> Any:
        res = await self._call(self._runtime, "ContainerStatus",
                               self.pb.ContainerStatusRequest(container_id=container_id))
        return res.status

    # -- ImageService -----------------------------------------------------------------------

    async def pull_image(self, image: str, **auth: str) -> str:
        """PullImage; ``auth`` fills its AuthConfig (username=…, password=…) as kubelet
        does with an image pull secret."""
        request = self.pb.PullImageRequest(image=self.pb.ImageSpec(image=image))
        if auth:
            request.auth.CopyFrom(self.pb.AuthConfig(**auth))
        res = await self._call(self._images, "PullImage", request)
        return str(res.image_ref)

    async def list_images(self) -> Any:
        return (await self._call(self._images, "ListImages", self.pb.ListImagesRequest())).images

    async def image_fs_info(self) -> Any:
        return await self._call(self._images, "ImageFsInfo", self.pb.ImageFsInfoRequest())

    async def image_status(self, image: str) -> Any | None:
        """The image, or None when containerd does not have it (CRI answers an empty one)."""
        res = await self._call(self._images, "ImageStatus",
                               self.pb.ImageStatusRequest(image=self.pb.ImageSpec(image=image)))
        return res.image if res.HasField("image") else None

    async def remove_image(self, image: str) -> None:
        await self._call(self._images, "RemoveImage",
                         self.pb.RemoveImageRequest(image=self.pb.ImageSpec(image=image)))


__all__ = ["CALL_TIMEOUT", "PROTO", "CriApi", "CriClient", "load_cri_api"]
