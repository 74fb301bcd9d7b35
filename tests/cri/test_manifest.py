"""contrib/kubernetes/ and README's containerd section, checked as a node would read them.

The DaemonSet must share snapfs's root and socket directory with the host at the very paths
its ConfigMap's config names (containerd on the host dials the socket and stacks overlays on
the FUSE directories under the root), with Bidirectional propagation (so mounts made in the
pod reach the host), as a privileged container with /dev/fuse. The TOML the READMEs tell an
operator to paste must parse, and the 1.6 CRI keys must be the ones the CRI tests run with.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

from snapfs.config import default_config, parse_config
from snapfs.dev.containerd import CRI_PLUGIN, CriOptions, containerd_config

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "contrib" / "kubernetes" / "snapfs.yaml"


def documents() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs), "one object of each kind"
    return by_kind


def daemonset_pod() -> dict[str, Any]:
    return dict(documents()["DaemonSet"]["spec"]["template"]["spec"])


def mounts_by_path(pod: dict[str, Any]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """mountPath → (volumeMount, volume)."""
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    return {m["mountPath"]: (m, volumes[m["name"]]) for m in container["volumeMounts"]}


def snapfs_config() -> Any:
    config_map = documents()["ConfigMap"]
    return parse_config(config_map["data"]["config.toml"], "ConfigMap snapfs-config",
                        default_config(rootless=False))


def test_root_and_state_are_host_paths_with_bidirectional_propagation() -> None:
    config = snapfs_config()
    mounts = mounts_by_path(daemonset_pod())
    for path in (str(config.root), str(config.state)):
        mount, volume = mounts[path]
        assert mount.get("mountPropagation") == "Bidirectional", path
        assert volume["hostPath"]["path"] == path  # the same path on the host: containerd's
        assert not mount.get("readOnly")
    assert config.socket.parent == config.state


def test_privileged_with_dev_fuse_and_no_host_pid() -> None:
    pod = daemonset_pod()
    (container,) = pod["containers"]
    assert container["securityContext"]["privileged"] is True
    _mount, volume = mounts_by_path(pod)["/dev/fuse"]
    assert volume["hostPath"] == {"path": "/dev/fuse", "type": "CharDevice"}
    assert not pod.get("hostPID")
    # Pod networking may itself depend on images snapfs serves.
    assert pod["hostNetwork"] is True


def test_config_comes_from_the_configmap_and_the_command_reads_it() -> None:
    pod = daemonset_pod()
    (container,) = pod["containers"]
    mount, volume = mounts_by_path(pod)["/etc/snapfs"]
    assert volume["configMap"]["name"] == documents()["ConfigMap"]["metadata"]["name"]
    assert mount["readOnly"] is True
    assert container["command"] == ["snapfs", "serve", "--config", "/etc/snapfs/config.toml"]
    # The registry hosts the config names are mounted from the node.
    assert str(snapfs_config().registry.config_path) in mounts_by_path(pod)


def test_readiness_probe_connects_to_the_configured_socket() -> None:
    (container,) = daemonset_pod()["containers"]
    command = container["readinessProbe"]["exec"]["command"]
    assert str(snapfs_config().socket) in " ".join(command)
    assert "connect" in " ".join(command)


def test_own_image_bypasses_snapfs_through_the_bootstrap_runtime_class() -> None:
    docs = documents()
    template = docs["DaemonSet"]["spec"]["template"]
    handler = docs["RuntimeClass"]["handler"]
    assert template["spec"]["runtimeClassName"] == docs["RuntimeClass"]["metadata"]["name"]
    assert template["metadata"]["annotations"]["io.containerd.cri.runtime-handler"] == handler
    node_toml = toml_blocks(REPO / "contrib" / "kubernetes" / "README.md")
    (cri,) = [b for b in node_toml if "plugins" in b]
    runtimes = cri["plugins"][CRI_PLUGIN]["containerd"]["runtimes"]
    assert runtimes[handler]["snapshotter"] == "overlayfs"
    assert docs["DaemonSet"]["spec"]["updateStrategy"]["type"] == "OnDelete"


def toml_blocks(path: Path, section: str | None = None) -> list[dict[str, Any]]:
    text = path.read_text()
    if section is not None:
        text = text[text.index(section):]
        text = text[:text.find("\n## ", 1) if "\n## " in text[1:] else len(text)]
    return [tomllib.loads(block) for block in re.findall(r"```toml\n(.*?)```", text, re.S)]


def test_readme_containerd_16_keys_are_what_the_cri_tests_run() -> None:
    # The proxy plugin, the 1.6/1.7 CRI keys, the 2.1 Transfer Service keys (then snapfs's
    # own [cri] section).
    proxy, cri_16, transfer, _ = toml_blocks(REPO / "README.md", "## Use with containerd")
    tested = tomllib.loads(containerd_config(
        Path("/b"), "/run/snapfs/snapfs.sock",
        cri=CriOptions("pause", Path("/c"), Path("/n"), exports_root=Path("/var/lib/snapfs"))))
    tested_proxy = tested["proxy_plugins"]["snapfs"]
    assert proxy["proxy_plugins"]["snapfs"] == {"type": "snapshot",
                                                "address": tested_proxy["address"]}
    readme_cri = cri_16["plugins"][CRI_PLUGIN]["containerd"]
    tested_cri = tested["plugins"][CRI_PLUGIN]["containerd"]
    assert readme_cri == {"snapshotter": "snapfs", "disable_snapshot_annotations": False}
    assert {k: tested_cri[k] for k in readme_cri} == readme_cri
    assert cri_16["proxy_plugins"]["snapfs"]["exports"] == tested_proxy["exports"]
    (unpack,) = transfer["plugins"]["io.containerd.transfer.v1.local"]["unpack_config"]
    assert unpack["snapshotter"] == "snapfs"


def test_readme_cri_proxy_section_is_a_snapfs_config() -> None:
    *_, block = toml_blocks(REPO / "README.md", "## Use with containerd")
    text = (REPO / "README.md").read_text()
    (section,) = re.findall(r"```toml\n(# /etc/snapfs/config.toml\n.*?)```", text, re.S)
    config = parse_config(section, "README", default_config(rootless=False))
    assert block["cri"]["enable"] is True
    assert (config.cri.enable, config.cri_socket, config.cri.upstream) == (
        True, Path("/run/snapfs/cri.sock"), "/run/containerd/containerd.sock")
    # kubelet's flag names the same socket.
    assert f"--image-service-endpoint=unix://{config.cri_socket}" in text
