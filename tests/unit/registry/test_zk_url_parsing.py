"""The ``registry`` setting's ZooKeeper URL and the endpoints cells publish: good values parse,
bad ones are refused with a message that names the setting and the problem."""

from __future__ import annotations

import pytest

from common.zk import ZkTarget, endpoint_problem, parse_zk_url


@pytest.mark.parametrize(
    ("url", "hosts", "path"),
    [
        ("zk://127.0.0.1:2181/rackcells/cells", "127.0.0.1:2181", "/rackcells/cells"),
        (
            "zk://127.0.0.1:2181,10.0.0.2:2181/rackcells/cells",
            "127.0.0.1:2181,10.0.0.2:2181",
            "/rackcells/cells",
        ),
        (
            "zk://zk-0.zk.svc:2181, zk-1.zk.svc:2181/cells/",
            "zk-0.zk.svc:2181,zk-1.zk.svc:2181",
            "/cells",
        ),
        ("zk://[::1]:2181/a_b/c.d", "[::1]:2181", "/a_b/c.d"),
    ],
)
def test_good_urls_give_hosts_for_kazoo_and_the_registry_path(
    url: str, hosts: str, path: str
) -> None:
    target = parse_zk_url(url)
    assert target == ZkTarget(hosts=hosts, path=path)


def test_the_target_prints_as_a_url() -> None:
    assert str(parse_zk_url("zk://127.0.0.1:2181/rackcells/cells")) == (
        "zk://127.0.0.1:2181/rackcells/cells"
    )


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("", "must start with zk://"),
        ("127.0.0.1:2181/cells", "must start with zk://"),
        ("http://127.0.0.1:2181/cells", "must start with zk://"),
        ("zk:///cells", "no HOST:PORT"),
        ("zk://127.0.0.1:2181", "no /PATH"),
        ("zk://127.0.0.1:2181/", "no /PATH"),
        ("zk://127.0.0.1/cells", "is not HOST:PORT"),
        ("zk://127.0.0.1:0/cells", "port '0'"),
        ("zk://127.0.0.1:99999/cells", "port '99999'"),
        ("zk://127.0.0.1:21x/cells", "port '21x'"),
        ("zk://127.0.0.1:2181,/cells", "is not HOST:PORT"),
        ("zk://bad_host!:2181/cells", "not a host name"),
        ("zk://127.0.0.1:2181/a//b", "segment ''"),
        ("zk://127.0.0.1:2181/a/../b", "segment '..'"),
        ("zk://127.0.0.1:2181/a b", "segment 'a b'"),
        ("zk://127.0.0.1:2181/zookeeper/cells", "reserved"),
    ],
)
def test_bad_urls_are_refused_naming_the_setting(url: str, problem: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_zk_url(url)
    message = str(info.value)
    assert message.startswith("registry: ")
    assert problem in message
    assert "zk://HOST:PORT" in message  # says what is expected


@pytest.mark.parametrize("endpoint", ["127.0.0.1:7001", "leaf-1.rack.example:443", "[::1]:7001"])
def test_good_endpoints(endpoint: str) -> None:
    assert endpoint_problem(endpoint) is None


@pytest.mark.parametrize(
    "endpoint", ["", "127.0.0.1", ":7001", "127.0.0.1:", "127.0.0.1:0", "host:port", "a b:1"]
)
def test_bad_endpoints_are_explained(endpoint: str) -> None:
    problem = endpoint_problem(endpoint)
    assert problem is not None
    assert repr(endpoint) in problem
