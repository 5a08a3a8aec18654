"""`kiota dev`'s options, importable without the chain libraries (the CLI builds its parser from them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DevOptions:
    api_port: int = 8000
    anvil_port: int = 8545
    simulator_port: int = 8089
    database_url: str = "postgresql://postgres@127.0.0.1:5432/kiota_dev"
    redis_url: str = "redis://127.0.0.1:6379/2"
    kes_per_usd: str = "129.50"
    callback_delay_seconds: float = 2.0
