"""The README's "Writing a service", followed as a newcomer would: the code shown is the
code deployed, and calling it works."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import REPO
from zeroslee.devcluster import DevCluster
from zeroslee.ua import UserAgent

DEPLOY = """
[[services]]
name = "echo"
sbb = "router.echo:EchoSbb"
options = { users = "^echo$" }
"""


def test_the_readme_sbb_is_the_shipped_echo_service() -> None:
    readme = (REPO / "README.md").read_text()
    shown = readme[readme.index("**1. Write the SBB**") :].split("```python\n", 1)[1].split("```", 1)[0]
    shipped = (REPO / "services" / "router" / "router" / "echo.py").read_text()
    assert shipped.endswith(shown)
    assert DEPLOY.strip() in readme


def test_deployed_echo_service_answers_and_echoes(tmp_path: Path) -> None:
    cluster = DevCluster(tmp_path, base=5600, extra=DEPLOY)
    cluster.start_all()
    ua = UserAgent("newcomer", 6731, cluster.balancer_addr)
    try:
        cluster.wait_ready()
        assert ua.invite("echo").status == 200
        assert ua.request("INFO", b"hi", "text/plain").status == 200
        assert ua.wait_request("INFO").body == b"hi"
        assert ua.request("BYE").status == 200
    finally:
        ua.close()
        cluster.stop()


def test_the_readme_b2bua_walkthrough_is_the_shipped_service_and_its_deployment() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### A B2BUA, step by step") : readme.index("## Fault tolerance")]
    shipped = (REPO / "services" / "router" / "router" / "b2b.py").read_text()
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 4
    for block in blocks:
        assert block in shipped, block
    (deploy,) = re.findall(r"```toml\n(.*?)```", section, re.S)
    config = [line.split("#")[0].strip() for line in (REPO / "config" / "cluster.toml").read_text().splitlines()]
    for line in deploy.strip().splitlines():
        assert line.strip() in config, line
