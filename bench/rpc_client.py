"""Which JSON-RPC client the benches' treasury and ingester use: KIOTA_BENCH_RPC=ours (default) or web3.

Issue 12 item 5 measures web3.py (`kiota.chain_web3.Web3ChainReader`) against our client
(`kiota.chain_rpc.ChainReader`) on B2 and B6, the product code unchanged: the harness builds the
reader it measures, and `kiota worker` is started through bench/web3_worker.py, which puts the
web3.py reader behind the worker's treasury and chain scan before it runs.
"""

from __future__ import annotations

import os

from kiota.chain_rpc import ChainReader
from kiota.chain_web3 import Web3ChainReader

RPC_CLIENT_ENV = "KIOTA_BENCH_RPC"
CLIENTS = ("ours", "web3")


def rpc_client() -> str:
    client = os.environ.get(RPC_CLIENT_ENV, "ours").strip().lower() or "ours"
    if client not in CLIENTS:
        raise SystemExit(f"bench: {RPC_CLIENT_ENV}={client!r}: choose {' or '.join(CLIENTS)}")
    return client


def reader_class() -> type[ChainReader]:
    return Web3ChainReader if rpc_client() == "web3" else ChainReader


def worker_module() -> str:
    """The module `python -m` runs as `kiota worker`."""
    return "bench.web3_worker" if rpc_client() == "web3" else "kiota.cli"


def described() -> str:
    if rpc_client() == "web3":
        return "web3.py (AsyncWeb3 + AsyncHTTPProvider, kept session, batch requests: kiota/chain_web3.py)"
    return "ours (kiota/chain_rpc.py, httpx keep-alive)"
