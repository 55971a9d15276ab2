"""The configuration file: mirrors the CLI options, flags override it, unknown keys are named."""

from __future__ import annotations

import pytest

from agent._config import DEFAULT_CONFIG_PATH, ConfigError, config_path
from agent._resource import ServiceRule
from agent.cli import parse_args


@pytest.fixture
def config(tmp_path, monkeypatch):
    path = tmp_path / "sidetrace.toml"
    monkeypatch.setenv("SIDETRACE_CONFIG", str(path))

    def write(text: str):
        path.write_text(text)
        return path
    return write


def test_file_values_become_defaults_and_flags_override_them(config):
    config("""
[run]
comm = ["nginx", "postgres"]
payload-bytes = 1024
stats-interval = 2
verbose = true
service = ["shop=exe:/srv/shop/*"]
command-args = true

[export.otlp]
endpoint = "http://collector:4318"
header = ["authorization=Bearer x"]
max-queue = "100"
""")
    args = parse_args(["run"])
    assert (args.comm, args.payload_bytes, args.stats_interval, args.verbose) == (["nginx", "postgres"], 1024, 2.0, True)
    assert args.service == [ServiceRule("shop", "exe", "/srv/shop/*")] and args.command_args
    args = parse_args(["run", "--payload-bytes", "512", "--comm", "redis"])
    assert args.payload_bytes == 512
    assert args.comm == ["redis"]  # a repeatable flag replaces the file's list
    otlp = parse_args(["export", "otlp"])  # --endpoint is required, and the file gives it
    assert (otlp.endpoint, otlp.header, otlp.max_queue, otlp.protocol) == (
        "http://collector:4318", ["authorization=Bearer x"], 100, "http/protobuf")
    assert parse_args(["export", "otlp", "--endpoint", "http://other"]).endpoint == "http://other"


@pytest.mark.parametrize("text, named", [
    ("[run]\npayload_bytes = 1\n", "[run] payload_bytes: unknown key (did you mean 'payload-bytes'?)"),
    ("[run]\nsocks = '/x'\n", "[run] socks: unknown key"),
    ("[runn]\nsocket = '/x'\n", "runn: unknown key"),
    ("verbose = true\n", "verbose: unknown key"),
    ("[export.otlp]\nendpointt = 'http://x'\n", "[export.otlp] endpointt: unknown key"),
    ("[export.zipkin]\nx = 1\n", "[export] zipkin: unknown key"),
    ("[export]\notlp = 3\n", "export.otlp must be a table"),
    ("[run]\nhelp = true\n", "[run] help: unknown key"),
    ("[run]\npayload-bytes = 'many'\n", "[run] payload-bytes"),
    ("[run]\nverbose = 'yes'\n", "[run] verbose: expected true or false"),
    ("[run]\ncomm = [1, [2]]\n", "[run] comm[1]: expected a single value"),
    ("[export.otlp]\nprotocol = 'thrift'\n", "[export.otlp] protocol: 'thrift' is not one of grpc, http/protobuf"),
    ("[run]\nservice = ['noequals']\n", "[run] service[0]: --service wants NAME=MATCH"),
    ("[run\n", "not valid TOML"),
])
def test_a_wrong_file_is_an_error_naming_the_key(config, text, named):
    path = config(text)
    # Errors anywhere in the file count, whatever command runs.
    with pytest.raises(ConfigError) as err:
        parse_args(["tail"])
    assert str(err.value).startswith(f"{path}: ") and named in str(err.value)


def test_config_path_choice(monkeypatch, tmp_path):
    monkeypatch.delenv("SIDETRACE_CONFIG", raising=False)
    assert config_path(["run"]) == (DEFAULT_CONFIG_PATH, False)
    assert config_path(["--config", "/a.toml", "run"]) == ("/a.toml", True)
    assert config_path(["--config=/b.toml", "tail"]) == ("/b.toml", True)
    with pytest.raises(ConfigError, match="no such configuration file"):
        parse_args(["--config", str(tmp_path / "missing.toml"), "run"])
    parse_args(["tail"])  # the default place may hold no file


def test_cli_reports_config_errors_in_one_line(config, capsys):
    from agent.cli import main

    config("[tail]\nformat = 'xml'\n")
    assert main(["tail"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
