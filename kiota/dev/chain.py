"""A local EVM chain for tests and `kiota dev`: a pinned anvil subprocess plus a stand-in USDC.

anvil comes from the repo's npm lockfile (`npm ci` puts it under node_modules/), so every machine runs
the same node. The token is `contracts/TestUSDC.sol`, compiled once into `usdc_token.json` next to this
module; its runtime code can be written to the real Base USDC address with `anvil_setCode`, so code under
test talks to the address it will use in production.

Everything here is test and development tooling: it relies on anvil-only RPC methods (anvil_*, evm_*)
and must never be pointed at a real network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO, Any, cast

import aiohttp
from eth_typing import ChecksumAddress, HexStr
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.contract import AsyncContract
from web3.types import RPCEndpoint, TxParams

from kiota.errors import KiotaError
from kiota.process import stop

BASE_CHAIN_ID = 8453
BASE_USDC_ADDRESS = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
# Lets a developer use an anvil installed some other way (e.g. foundryup) without touching the repo.
ANVIL_BIN_ENV = "KIOTA_ANVIL_BIN"
SETUP_COMMAND = "npm ci"

# Any provider will do for these helpers; AsyncWeb3 is generic (and invariant) in its provider type.
Web3Client = AsyncWeb3[Any]

_ARTIFACT = "usdc_token.json"
# npm's platform sub-packages of @foundry-rs/anvil, keyed by (platform.system(), platform.machine()).
_NPM_PLATFORMS = {
    ("Linux", "x86_64"): "linux-amd64",
    ("Linux", "aarch64"): "linux-arm64",
    ("Darwin", "x86_64"): "darwin-amd64",
    ("Darwin", "arm64"): "darwin-arm64",
}


class AnvilError(KiotaError):
    """The local anvil node could not be found, started, or asked to do something."""


@dataclass(frozen=True)
class AnvilNode:
    """A running anvil subprocess, as yielded by `start_anvil`."""

    rpc_url: str
    port: int
    chain_id: int
    process: asyncio.subprocess.Process
    log_path: Path


def repo_root() -> Path:
    """The checkout this module lives in (kiota/dev/chain.py → repo root)."""
    return Path(__file__).resolve().parents[2]


def anvil_binary() -> Path:
    """Where the pinned anvil binary is; raises AnvilError with the setup command if it is missing."""
    override = os.environ.get(ANVIL_BIN_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise AnvilError(f"{ANVIL_BIN_ENV}={override} does not point at a file")
        return path
    npm_platform = _NPM_PLATFORMS.get((platform.system(), platform.machine()))
    if npm_platform is None:
        raise AnvilError(
            f"no npm build of anvil for {platform.system()}/{platform.machine()}; "
            f"install anvil yourself and set {ANVIL_BIN_ENV}"
        )
    path = repo_root() / "node_modules" / "@foundry-rs" / f"anvil-{npm_platform}" / "bin" / "anvil"
    if not path.is_file():
        raise AnvilError(
            f"anvil not found at {path}; run `{SETUP_COMMAND}` in {repo_root()} "
            "to install the version pinned in package-lock.json"
        )
    return path


def anvil_command(port: int, chain_id: int = BASE_CHAIN_ID, block_time: float | None = None) -> list[str]:
    """The argv `start_anvil` runs, exposed so `kiota dev` can print it."""
    argv = [
        str(anvil_binary()),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--chain-id", str(chain_id),
        # Makes "finalized" trail the head by two blocks instead of 64, so finality is testable.
        "--slots-in-an-epoch", "1",
    ]  # fmt: skip
    if block_time is not None:
        # Without it anvil mines one block per transaction (automine), which most tests want.
        argv += ["--block-time", f"{block_time:g}"]
    return argv


@contextlib.asynccontextmanager
async def start_anvil(
    port: int,
    chain_id: int = BASE_CHAIN_ID,
    block_time: float | None = None,
    *,
    log_path: Path | None = None,
    startup_timeout: float = 10.0,
    extra_args: Sequence[str] = (),
) -> AsyncIterator[AnvilNode]:
    """Run anvil on 127.0.0.1:`port` until the block exits; yields once `eth_chainId` answers.

    anvil's output goes to `log_path` (appended), or to a temporary file removed on exit.
    """
    _ensure_port_free(port)
    argv = [*anvil_command(port, chain_id, block_time), *extra_args]
    with contextlib.ExitStack() as stack:
        if log_path is None:
            log_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="kiota-anvil-"))
            log_path = Path(log_dir) / "anvil.log"
        log = stack.enter_context(_open_log(log_path))
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT
        )
        try:
            node = AnvilNode(f"http://127.0.0.1:{port}", port, chain_id, process, log_path)
            await _wait_until_ready(node, startup_timeout)
            yield node
        finally:
            await stop(process, grace=5.0)  # SIGTERM lets anvil shut its server down cleanly


@contextlib.asynccontextmanager
async def connect(rpc_url: str) -> AsyncIterator[Web3Client]:
    """An AsyncWeb3 on `rpc_url` whose HTTP session is closed on exit."""
    w3: Web3Client = AsyncWeb3(AsyncHTTPProvider(rpc_url))
    try:
        yield w3
    finally:
        await w3.provider.disconnect()


def load_usdc_artifact() -> dict[str, Any]:
    """The compiled TestUSDC: abi, deployedBytecode, compiler, source_sha256."""
    text = resources.files("kiota.dev").joinpath(_ARTIFACT).read_text(encoding="utf-8")
    return cast(dict[str, Any], json.loads(text))


def load_usdc_abi() -> list[dict[str, Any]]:
    """The ERC-20 ABI of TestUSDC (a superset of what Kiota calls on real USDC, plus `mint`)."""
    return cast(list[dict[str, Any]], load_usdc_artifact()["abi"])


def usdc_contract(w3: Web3Client, token_address: str) -> AsyncContract:
    """TestUSDC (or real USDC, for the ERC-20 subset) at `token_address`, bound to `w3`."""
    return w3.eth.contract(address=_checksum(token_address), abi=load_usdc_abi())


async def install_usdc(w3: Web3Client, address: str = BASE_USDC_ADDRESS) -> None:
    """Put TestUSDC's runtime code at `address`; balances there start empty (no initialised storage)."""
    code = cast(str, load_usdc_artifact()["deployedBytecode"])
    await _rpc(w3, "anvil_setCode", [_checksum(address), code])


async def mint_usdc(w3: Web3Client, token_address: str, to: str, amount_micro: int) -> HexStr:
    """Mint `amount_micro` (USDC micro-units) to `to`; returns the mined transaction's hash (0x-hex)."""
    if amount_micro <= 0:
        raise ValueError(f"amount_micro must be positive, got {amount_micro}")
    accounts = await w3.eth.accounts
    if not accounts:
        raise AnvilError("the node has no unlocked accounts to send the mint from")
    sender = accounts[0]
    tx_hash = (
        await usdc_contract(w3, token_address)
        .functions.mint(_checksum(to), amount_micro)
        .transact(TxParams({"from": sender}))
    )
    receipt = await w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
    if receipt["status"] != 1:
        raise AnvilError(f"mint transaction {tx_hash.to_0x_hex()} reverted")
    return HexStr(tx_hash.to_0x_hex())


async def fund_eth(w3: Web3Client, address: str, wei: int) -> None:
    """Set (not add to) the ETH balance of `address`, so it can pay gas."""
    await _rpc(w3, "anvil_setBalance", [_checksum(address), hex(wei)])


async def usdc_balance(w3: Web3Client, token: str, address: str) -> int:
    """Balance of `address` in USDC micro-units, at the latest block."""
    balance = await usdc_contract(w3, token).functions.balanceOf(_checksum(address)).call()
    return int(balance)


async def snapshot(w3: Web3Client) -> str:
    """Snapshot the chain state; the id is good for one `revert` (anvil drops it, and later ones, then)."""
    return str(await _rpc(w3, "evm_snapshot", []))


async def revert(w3: Web3Client, snap_id: str) -> None:
    """Return the chain to snapshot `snap_id`."""
    if not await _rpc(w3, "evm_revert", [snap_id]):
        raise AnvilError(f"evm_revert refused snapshot {snap_id} (unknown or already used)")


async def mine(w3: Web3Client, blocks: int = 1) -> None:
    """Mine `blocks` empty blocks now."""
    await _rpc(w3, "anvil_mine", [hex(blocks)])


async def _rpc(w3: Web3Client, method: str, params: list[Any]) -> Any:
    # coro_request turns a JSON-RPC error into Web3RPCError; anvil_* methods have no typed wrapper in web3.
    return await w3.manager.coro_request(RPCEndpoint(method), params)


def _checksum(address: str) -> ChecksumAddress:
    return AsyncWeb3.to_checksum_address(address)


def _ensure_port_free(port: int) -> None:
    # Otherwise our readiness probe could be answered by some other node already on that port,
    # while our anvil quietly exits on "address in use".
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise AnvilError(f"port {port} on 127.0.0.1 is already in use") from exc


@contextlib.contextmanager
def _open_log(path: Path) -> Iterator[IO[bytes]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as log:
        yield log


def _log_tail(path: Path, limit: int = 2000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return "(no log)"
    return data[-limit:].decode("utf-8", errors="replace").strip() or "(empty log)"


async def _wait_until_ready(node: AnvilNode, limit_s: float) -> None:
    try:
        async with asyncio.timeout(limit_s):
            await _poll_chain_id(node)
    except TimeoutError as exc:
        raise AnvilError(
            f"anvil did not answer eth_chainId on {node.rpc_url} within {limit_s:g} s; "
            f"log {node.log_path}:\n{_log_tail(node.log_path)}"
        ) from exc


async def _poll_chain_id(node: AnvilNode) -> None:
    # No retries inside web3: this loop is the retry, and it must notice the process dying.
    provider = AsyncHTTPProvider(
        node.rpc_url, exception_retry_configuration=None, request_kwargs={"timeout": aiohttp.ClientTimeout(1)}
    )
    w3: Web3Client = AsyncWeb3(provider)
    try:
        while True:
            if node.process.returncode is not None:
                raise AnvilError(
                    f"anvil exited with code {node.process.returncode} before answering; "
                    f"log {node.log_path}:\n{_log_tail(node.log_path)}"
                )
            # Connection refused until anvil binds its port; an aiohttp timeout is a TimeoutError subclass.
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                answered = await w3.eth.chain_id
                if answered != node.chain_id:
                    raise AnvilError(f"{node.rpc_url} answered chain id {answered}, expected {node.chain_id}")
                return
            await asyncio.sleep(0.02)
    finally:
        await provider.disconnect()
