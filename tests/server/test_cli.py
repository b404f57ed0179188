"""`tnn serve` flags are generated from Settings: every field has its flag, flags beat TNN_* variables."""

from __future__ import annotations

import pytest

from tnn.cli.main import build_parser, main
from tnn.server.cli import settings_from
from tnn.server.settings import Settings


def parse(*argv: str) -> Settings:
    return settings_from(build_parser("serve").parse_args(["serve", *argv]))


def test_every_setting_is_a_flag_with_its_env_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser("serve").parse_args(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for name in Settings.model_fields:
        if name in ("model_dir", "log_level"):  # the positional MODEL_DIR; `tnn --log-level`
            continue
        assert f"--{name.replace('_', '-')}" in help_text, name
        assert f"TNN_{name.upper()}" in help_text, name
    assert "MODEL_DIR" in help_text and "--warmup, --no-warmup" in help_text


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TNN_PORT", "7001")
    monkeypatch.setenv("TNN_MAX_NUM_SEQS", "5")
    monkeypatch.setenv("TNN_MODEL_DIR", "/from/env")
    monkeypatch.setenv("TNN_CORS_ORIGINS", "http://a, http://b")
    settings = parse("--port", "7002", "--no-warmup")
    assert (settings.port, settings.max_num_seqs, str(settings.model_dir)) == (7002, 5, "/from/env")
    assert settings.cors_origins == ["http://a", "http://b"] and settings.warmup is False
    settings = parse("/from/flag", "--cors-origins", "http://c,http://d", "--max-n", "2", "--api-key", "k")
    assert str(settings.model_dir) == "/from/flag" and settings.cors_origins == ["http://c", "http://d"]
    assert settings.max_n == 2 and settings.api_key is not None and settings.api_key.get_secret_value() == "k"


def test_defaults_without_flags_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(f"TNN_{name.upper()}", raising=False)
    assert parse() == Settings()


def test_log_level_flag_belongs_to_the_dispatcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TNN_LOG_LEVEL", raising=False)
    assert settings_from(build_parser("serve").parse_args(["--log-level", "ERROR", "serve"])).log_level == "INFO"
    monkeypatch.setenv("TNN_LOG_LEVEL", "DEBUG")
    assert parse().log_level == "DEBUG"


@pytest.mark.parametrize("argv", [["--port", "eighty"], ["--max-num-seqs", "0"], ["--dtype", "int8"]])
def test_invalid_flag_values_exit_2(argv: list[str]) -> None:
    try:
        status = main(["serve", *argv])
    except SystemExit as exc:  # argparse rejects choices itself
        status = exc.code
    assert status == 2
