"""Settings: a YAML file overridden by ``RELAYGUARD_*`` environment variables (``__`` nests).

``RELAYGUARD_SMTP__LISTEN=127.0.0.1:2525`` overrides ``smtp.listen`` in the file. A bad value is
reported as one line naming the key (see :func:`load_settings`), never as a traceback.
"""

from __future__ import annotations

import ipaddress
import os
import re
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from relayguard.errors import ConfigError

CONFIG_ENV = "RELAYGUARD_CONFIG"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def parse_listen(value: str, *, default_port: int) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) into its parts; the host stays explicit, never a lookup."""
    host, sep, port = value.rpartition(":")
    if not sep:
        return value, default_port
    host = host.strip("[]")
    # Port 0 asks the OS for a free port (tests).
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"port must be 0-65535 in {value!r}")
    return host or "127.0.0.1", int(port)


def _check_listen(value: str) -> str:
    parse_listen(value, default_port=0)
    return value


_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def _check_hostname(value: str) -> str:
    # Sent in greetings, HELO and DSNs: CR/LF or spaces here would inject SMTP commands.
    if not _HOSTNAME.fullmatch(value):
        raise ValueError("must be a plain host name (letters, digits, dots, hyphens)")
    return value


class SmtpSettings(_Section):
    listen: str = "127.0.0.1:2525"
    hostname: str = "relayguard.localdomain"  # explicit, so no connection waits on a name lookup
    tls_cert: Path | None = None
    tls_key: Path | None = None
    trusted_networks: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    max_message_size: int = Field(default=36 * 1024 * 1024, gt=0)  # advertised as SIZE; 552 above it
    max_recipients: int = Field(default=1000, gt=0)  # 452 past it
    max_line_length: int = Field(default=998, ge=78)  # RFC 5322 limit, excluding CRLF
    timeout: float = Field(default=300, gt=0)  # seconds of client silence before 421
    max_sessions: int = Field(default=200, gt=0)  # per process
    max_sessions_per_ip: int = Field(default=50, gt=0)  # per process
    # Relay processes sharing the port (SO_REUSEPORT, Linux): one per core for a busy site.
    processes: int = Field(default=1, ge=1, le=64)

    _listen = field_validator("listen")(_check_listen)
    _hostname = field_validator("hostname")(_check_hostname)

    @field_validator("trusted_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for net in value:
            ipaddress.ip_network(net, strict=False)
        return value


class UpstreamTls(StrEnum):
    STARTTLS = "starttls"
    IMPLICIT = "implicit"
    NONE = "none"


class UpstreamSettings(_Section):
    host: str | None = None  # None: dev mode, delivered into the built-in capture mailbox
    port: int = Field(default=25, gt=0, lt=65536)
    tls: UpstreamTls = UpstreamTls.STARTTLS
    verify: bool = True  # certificate verification; turning it off is logged loudly
    ca_file: Path | None = None
    username: str | None = None
    password: str | None = None
    helo: str = "relayguard.localdomain"
    timeout: float = Field(default=60, gt=0)

    _helo = field_validator("helo")(_check_hostname)


class StoreSettings(_Section):
    url: str = "sqlite:///var/relayguard.db"
    synchronous: str = "FULL"  # SQLite: FULL survives power loss, the default for a mail queue

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "postgresql:", "postgresql+asyncpg:", "postgres:")):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return value


class PolicySettings(_Section):
    path: Path = Path("policies/default.yaml")
    watch: bool = True  # reload on file change as well as on SIGHUP


class WebSettings(_Section):
    listen: str = "127.0.0.1:8025"
    enabled: bool = True
    secret_key: str | None = None  # None: a random key kept in the store's folder
    base_url: str | None = None  # for links in notices; default http://<listen>
    session_hours: float = Field(default=8, gt=0)

    _listen = field_validator("listen")(_check_listen)


class DeliverySettings(_Section):
    instance: str | None = None  # lease owner name; default host/listen, stable across restarts
    # Concurrent upstream connections (per relay process). Each message costs its sender four
    # or five round trips through the event loop, which also serves every client: with 4, a
    # busy loop left delivery at a quarter of the acceptance rate (100 KiB, 55 vs 200 msgs/s)
    # and the queue grew; 8 keep up. Postfix allows 20 per destination by default.
    workers: int = Field(default=8, gt=0)
    lease: timedelta = timedelta(minutes=5)  # a claimed message is claimed again after this
    retry_base: timedelta = timedelta(seconds=60)
    retry_max: timedelta = timedelta(hours=1)
    max_age: timedelta = timedelta(days=5)  # then bounced with a DSN
    poll_interval: float = Field(default=1.0, gt=0)
    batch: int = Field(default=20, gt=0)


class ScanSettings(_Section):
    """Bounds on extraction. Anything over a bound is an ``unscannable`` finding, never a pass."""

    max_decoded_bytes: int = Field(default=100 * 1024 * 1024, gt=0)  # all parts, after decoding
    max_part_bytes: int = Field(default=50 * 1024 * 1024, gt=0)  # one part or archive member
    max_depth: int = Field(default=8, gt=0)  # nested archives / messages / MIME multiparts
    max_members: int = Field(default=1000, gt=0)  # archive members
    max_ratio: float = Field(default=100.0, gt=1)  # uncompressed / compressed
    time_budget: float = Field(default=20.0, gt=0)  # seconds for one message
    max_mime_parts: int = Field(default=2000, gt=0)
    max_header_bytes: int = Field(default=256 * 1024, gt=0)
    # Worker processes that parse and scan (0: a thread of the relay's own process).
    workers: int = Field(default=2, ge=0, le=64)
    # Messages up to this size are first decided in the relay's event loop, within a slice of
    # ~10 ms and without opening archives or documents (those go to a worker): a worker's round
    # trip costs ~2 ms of CPU, more than deciding a 100 KiB message (~1 ms). See scanpool.py.
    inline_max_bytes: int = Field(default=128 * 1024, ge=0)
    # A large table (sheet or csv) gets a forked helper process that reads and detects part of
    # it while the scanning process goes on reading (about half the time on two cores); see
    # relayguard/detect/parallel.py.
    detect_helper: bool = True


class QuarantineSettings(_Section):
    expire_after: timedelta = timedelta(days=7)
    remind_before: timedelta = timedelta(days=1)
    notify_sender: bool = True
    reviewers: list[str] = Field(default_factory=list)  # addresses prompted for each hold


class AlertSettings(_Section):
    admins: list[str] = Field(default_factory=list)
    alert_after: timedelta = timedelta(minutes=15)
    held_after: timedelta = timedelta(hours=4)
    silence_floor: timedelta = timedelta(hours=4)
    dedupe_for: timedelta = timedelta(hours=1)


class RetentionSettings(_Section):
    purge_after: timedelta = timedelta(days=7)


class LogSettings(_Section):
    level: str = "INFO"
    format: str = "json"  # json lines, or "console" for people


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RELAYGUARD_", env_nested_delimiter="__",
                                      extra="forbid", nested_model_default_partial_update=True)

    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    web: WebSettings = Field(default_factory=WebSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    scan: ScanSettings = Field(default_factory=ScanSettings)
    quarantine: QuarantineSettings = Field(default_factory=QuarantineSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    dev_capture: Annotated[bool, Field(description="deliver into the capture mailbox")] = False

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first, then the YAML file passed in as init kwargs: env overrides the file.
        return env_settings, init_settings

    @property
    def capture_mode(self) -> bool:
        """No upstream configured: mail goes to the built-in capture mailbox (dev mode)."""
        return self.dev_capture or not self.upstream.host


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read settings file: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{where}: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the settings file must be a mapping of sections")
    return data


def _describe(exc: ValidationError, source: str) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"])
    env = "RELAYGUARD_" + "__".join(str(p).upper() for p in err["loc"])
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown setting"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{source}: setting {key} (env {env}): {msg}{more}"


def load_settings(path: Path | None = None) -> Settings:
    """Settings from ``path`` (or ``$RELAYGUARD_CONFIG``) and the environment.

    Raises :class:`ConfigError` with one line naming the key at fault.
    """
    if path is None and os.environ.get(CONFIG_ENV):
        path = Path(os.environ[CONFIG_ENV])
    data = _read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "settings"
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from exc
    except ValueError as exc:  # pydantic-settings raises this for env values that are not JSON
        raise ConfigError(f"{source}: {exc}") from exc
