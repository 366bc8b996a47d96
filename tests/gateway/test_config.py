"""Settings: flags win over environment variables; a bad value names its flag and variable."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from gateway.config import (
    OPTIONS,
    ConfigError,
    Settings,
    _Option,
    build_parser,
    check_tls_files,
    environment_variables,
    load_settings,
)

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
    documented = set(re.findall(r"`((?:GATEWAY|STABLECOG|OTEL)_[A-Z_]+)`", readme))
    assert environment_variables() <= documented, environment_variables() - documented


# --- every option, from the OPTIONS table: a new option is covered as soon as it exists ---

# A bad value for each kind of option (keyed by what --help shows for it); an option of a
# new kind fails `test_every_option_kind_has_a_bad_example` until it gets one here.
BAD_VALUES = {
    "HOST:PORT": "50051",
    "URL": "ftp://example.com",
    "SECONDS": "abc",
    "N": "1.5",
    "BYTES": "64MB",
    "NAME": " ",
    "FILE": "/nonexistent/file",
    "BOOL": "maybe",
}
VALUED = [o for o in OPTIONS if not o.is_switch]


def _bad_value(option: _Option) -> str:
    if option.shown_value.startswith("{"):
        return "nonsense"  # not one of the choices
    return BAD_VALUES[option.shown_value]


def test_every_option_kind_has_a_bad_example() -> None:
    for option in OPTIONS:
        assert option.shown_value.startswith("{") or option.shown_value in BAD_VALUES, option


@pytest.mark.parametrize("option", OPTIONS, ids=[o.flag for o in OPTIONS])
def test_a_bad_value_in_the_environment_names_the_flag_and_the_variable(option: _Option) -> None:
    bad = _bad_value(option)
    with pytest.raises(ConfigError) as caught:
        load_settings([], {option.env: bad})
    message = str(caught.value)
    assert message.startswith(f"invalid {option.flag} / {option.env}: expected "), message
    assert message.endswith(f", got {bad!r}"), message


@pytest.mark.parametrize("option", VALUED, ids=[o.flag for o in VALUED])
def test_a_bad_flag_value_names_the_flag_and_the_variable(option: _Option) -> None:
    bad = _bad_value(option)
    with pytest.raises(ConfigError, match=re.escape(f"invalid {option.flag} / {option.env}: ")):
        load_settings([option.flag, bad], {})


def test_the_issues_examples() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings([], {"GATEWAY_CACHE_TTL": "abc"})
    assert str(caught.value) == (
        "invalid --cache-ttl / GATEWAY_CACHE_TTL: expected a positive number of seconds, got 'abc'"
    )
    assert "could not convert" not in str(caught.value)


def test_a_password_in_a_bad_url_is_not_repeated() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings([], {"GATEWAY_REDIS_URL": "http://user:hunter2@redis:6379/0"})
    assert "hunter2" not in str(caught.value)
    assert "GATEWAY_REDIS_URL" in str(caught.value)


@pytest.mark.parametrize(
    "env",
    [
        {"GATEWAY_CACHE": "redis"},
        {"STABLECOG_API_KEY": "sc-x", "STABLECOG_API_KEY_FILE": "/etc/hostname"},
        {"GATEWAY_TLS_CERT_FILE": "/etc/hostname"},
        {"GATEWAY_TLS_KEY_FILE": "/etc/hostname"},
        {"GATEWAY_TLS_CLIENT_CA_FILE": "/etc/hostname"},
    ],
)
def test_inconsistent_settings_name_flags_and_variables(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings([], env)
    named = re.findall(r"(--[a-z-]+) / ([A-Z_]+)", str(caught.value))
    assert named, str(caught.value)
    by_flag = {o.flag: o.env for o in OPTIONS}
    assert all(by_flag[flag] == env_name for flag, env_name in named), str(caught.value)


@pytest.mark.parametrize("option", [o for o in OPTIONS if o.is_switch], ids=lambda o: o.flag)
def test_a_switch_flag_wins_both_ways(option: _Option) -> None:
    negative = "--no-" + option.flag.removeprefix("--")
    assert getattr(load_settings([negative], {option.env: "true"}), option.attr) is False
    assert getattr(load_settings([option.flag], {option.env: "false"}), option.attr) is True
    assert getattr(load_settings([], {option.env: "true"}), option.attr) is True
    assert getattr(load_settings([], {option.env: "false"}), option.attr) is False
    assert getattr(load_settings([], {}), option.attr) is getattr(Settings(), option.attr)


def test_log_prompts_set_by_the_environment_can_be_turned_off() -> None:
    env = {"GATEWAY_LOG_PROMPTS": "true"}
    assert load_settings(["--no-log-prompts"], env).log_prompts is False


@pytest.mark.parametrize("flag", ["--listen", "--metrics-listen"])
def test_a_bare_port_listens_on_every_interface(flag: str) -> None:
    settings = load_settings([flag, ":50051"], {})
    assert getattr(settings, flag.removeprefix("--").replace("-", "_")) == "0.0.0.0:50051"
    assert load_settings([], {"GATEWAY_LISTEN": ":0"}).listen == "0.0.0.0:0"
    assert load_settings(["--listen", "[::1]:50051"], {}).listen == "[::1]:50051"


def test_help_shows_each_options_type_or_choices() -> None:
    text = " ".join(build_parser().format_help().split())
    assert "VALUE" not in text
    for option in OPTIONS:
        if option.is_switch:
            negative = "--no-" + option.flag.removeprefix("--")
            assert f"{option.flag}, {negative}" in text
        else:
            assert f"{option.flag} {option.shown_value}" in text
        assert option.env in text
    assert "--cache {memory,redis,off}" in text
    assert "--log-level {debug,info,warning,error}" in text
    assert "--cache-ttl SECONDS" in text


# --- TLS files: the cause, named with the flag and the variable (not grpc's log) ---


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two self-signed certificates with their keys, an encrypted key and garbage."""
    d = tmp_path_factory.mktemp("tls")
    for name in ("a", "b"):
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=d,
        )  # fmt: skip
    _openssl("pkey", "-in", "a.key", "-aes256", "-passout", "pass:secret", "-out", "enc.key", cwd=d)
    (d / "garbage.pem").write_text("not a certificate\n")
    (d / "broken.crt").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    return d


@pytest.mark.parametrize(
    ("cert", "key", "ca", "named", "cause"),
    [
        ("garbage.pem", "a.key", None, "--tls-cert-file / GATEWAY_TLS_CERT_FILE", "no PEM cert"),
        ("broken.crt", "a.key", None, "--tls-cert-file / GATEWAY_TLS_CERT_FILE", "not a valid"),
        ("a.crt", "garbage.pem", None, "--tls-key-file / GATEWAY_TLS_KEY_FILE", "no PEM private"),
        ("a.crt", "a.crt", None, "--tls-key-file / GATEWAY_TLS_KEY_FILE", "no PEM private"),
        ("a.crt", "b.key", None, "--tls-key-file / GATEWAY_TLS_KEY_FILE", "does not match"),
        ("a.crt", "enc.key", None, "--tls-key-file / GATEWAY_TLS_KEY_FILE", "is encrypted"),
        (
            "a.crt",
            "a.key",
            "garbage.pem",
            "--tls-client-ca-file / GATEWAY_TLS_CLIENT_CA_FILE",
            "no PEM CA",
        ),
    ],
)
def test_bad_tls_files_name_the_flag_and_the_cause(
    tls_files: Path, cert: str, key: str, ca: str | None, named: str, cause: str
) -> None:
    env = {
        "GATEWAY_TLS_CERT_FILE": str(tls_files / cert),
        "GATEWAY_TLS_KEY_FILE": str(tls_files / key),
    }
    if ca:
        env["GATEWAY_TLS_CLIENT_CA_FILE"] = str(tls_files / ca)
    settings = load_settings([], env)  # readable files: the content is checked at start
    with pytest.raises(ConfigError) as caught:
        check_tls_files(settings)
    assert str(caught.value).startswith(f"invalid {named}: "), str(caught.value)
    assert cause in str(caught.value)


def test_good_tls_files_load(tls_files: Path) -> None:
    settings = load_settings(
        [
            "--tls-cert-file", str(tls_files / "a.crt"),
            "--tls-key-file", str(tls_files / "a.key"),
            "--tls-client-ca-file", str(tls_files / "b.crt"),
        ],
        {},
    )  # fmt: skip
    check_tls_files(settings)
    assert settings.tls_cert_file == tls_files / "a.crt"
