"""`kiota worker` with web3.py behind its treasury and chain scan (bench/rpc_client.py, KIOTA_BENCH_RPC=web3).

    python -m bench.web3_worker worker     (as `python -m kiota.cli worker`; the benches start it)

Bench-only: the product builds `ChainReader` in kiota/treasury.py and jobs/context.py; these two names are
pointed at `Web3ChainReader` before the worker starts, so nothing else differs from `kiota worker`.
"""

from __future__ import annotations

import sys

import jobs.context
import kiota.treasury
from kiota.chain_web3 import Web3ChainReader
from kiota.cli import main

if __name__ == "__main__":
    for module in (kiota.treasury, jobs.context):  # the two places the worker builds a ChainReader
        vars(module)["ChainReader"] = Web3ChainReader
    sys.exit(main(sys.argv[1:]))
