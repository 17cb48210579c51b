"""A SIP UA from Debian, not written by us, talks to the cluster."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from zeroslee.devcluster import DevCluster


def sipsak_options(cluster: DevCluster, local_port: int) -> subprocess.CompletedProcess[str]:
    sipsak = shutil.which("sipsak")
    if sipsak is None:
        pytest.fail("sipsak is not installed: run `make setup`")
    host, port = cluster.balancer_addr
    argv = [sipsak, "-s", f"sip:room@{host}:{port}", "-l", str(local_port), "-vv"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def test_sipsak_options_gets_200_with_allow_through_the_balancer(cluster: DevCluster) -> None:
    run = sipsak_options(cluster, 6601)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SIP/2.0 200 OK" in run.stdout
    assert "Allow: INVITE, ACK, BYE, CANCEL, INFO, OPTIONS" in run.stdout


def test_sipsak_options_gets_503_when_no_node_is_up(cluster: DevCluster) -> None:
    for node in cluster.config.node_ids:
        cluster.kill_node(node)
    cluster.wait_live([])
    run = sipsak_options(cluster, 6602)
    assert "SIP/2.0 503 Service Unavailable" in run.stdout
