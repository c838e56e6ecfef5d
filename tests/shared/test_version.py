from shared.version import is_outdated, parse_version


def test_parse_version() -> None:
    assert parse_version("onprem-agent_0.1.0") == (0, 1, 0)
    assert parse_version("0.2.0+src") == (0, 2, 0)
    assert parse_version("OpenSSH_9.2p1") is None
    assert parse_version("") is None


def test_is_outdated() -> None:
    assert is_outdated("onprem-agent_0.1.0", "0.2.0")
    assert not is_outdated("onprem-agent_0.2.0", "0.2.0")
    assert not is_outdated("onprem-agent_0.10.0", "0.9")
    assert not is_outdated("OpenSSH_9.2p1", "0.2.0")  # unknown: not flagged
    assert not is_outdated("onprem-agent_0.1.0", None)
