"""Settings: flags win over environment variables; a bad value names its flag and variable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.config import OPTIONS, ConfigError, Settings, environment_variables, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_match_the_contract() -> None:
    settings = load_settings([], {})
    assert settings.listen == "0.0.0.0:50051"
    assert settings.metrics_listen == "0.0.0.0:9464"
    assert settings.upstream_url == "https://api.stablecog.com"
    assert settings.api_key is None and settings.api_key_file is None
    assert settings.upstream_timeout > 240  # above the upstream's worker timeout


def test_flag_wins_over_environment() -> None:
    env = {"GATEWAY_LISTEN": "127.0.0.1:1", "STABLECOG_API_URL": "http://127.0.0.1:8000/"}
    assert load_settings([], env).listen == "127.0.0.1:1"
    assert load_settings([], env).upstream_url == "http://127.0.0.1:8000"
    assert load_settings(["--listen", "127.0.0.1:2"], env).listen == "127.0.0.1:2"


def test_key_comes_from_the_environment_and_never_shows() -> None:
    settings = load_settings([], {"STABLECOG_API_KEY": "sc-secret"})
    assert settings.api_key == "sc-secret"
    assert "sc-secret" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"GATEWAY_LISTEN": "50051"}, "GATEWAY_LISTEN"),
        ({"STABLECOG_API_URL": "ftp://x"}, "STABLECOG_API_URL"),
        ({"GATEWAY_UPSTREAM_TIMEOUT": "-1"}, "GATEWAY_UPSTREAM_TIMEOUT"),
        ({"GATEWAY_UPSTREAM_TIMEOUT": "nan"}, "GATEWAY_UPSTREAM_TIMEOUT"),
        ({"GATEWAY_CACHE": "disk"}, "GATEWAY_CACHE"),
        ({"GATEWAY_CACHE": "redis"}, "GATEWAY_REDIS_URL"),
        ({"GATEWAY_REDIS_URL": "http://x"}, "GATEWAY_REDIS_URL"),
        ({"GATEWAY_MAX_CALLERS": "0"}, "GATEWAY_MAX_CALLERS"),
        ({"GATEWAY_LOG_PROMPTS": "maybe"}, "GATEWAY_LOG_PROMPTS"),
        ({"STABLECOG_API_KEY_FILE": "/nonexistent/key"}, "STABLECOG_API_KEY_FILE"),
        ({"GATEWAY_TLS_CERT_FILE": "/etc/hostname"}, "GATEWAY_TLS_KEY_FILE"),
    ],
)
def test_bad_values_fail_naming_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings([], env)


def test_every_setting_has_a_flag_an_env_var_and_a_field() -> None:
    fields = set(Settings.__dataclass_fields__)
    for option in OPTIONS:
        assert option.attr in fields
        assert option.flag == "--" + option.attr.replace("_", "-")


def test_readme_documents_every_environment_variable() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"`((?:GATEWAY|STABLECOG)_[A-Z_]+)`", readme))
    assert environment_variables() <= documented, environment_variables() - documented
