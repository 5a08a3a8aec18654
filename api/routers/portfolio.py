"""The user's portfolio: balances from the ledger and the deposit address."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CurrentUser, PoolDep
from api.schemas import AUTHENTICATED, PortfolioOut
from kiota.ledger import USER_ASSETS
from kiota.money import format_usdc
from kiota.store.ledger import user_balances

router = APIRouter(tags=["portfolio"])


@router.get("/portfolio", responses=AUTHENTICATED)
async def get_portfolio(user: CurrentUser, pool: PoolDep) -> PortfolioOut:
    balances = await user_balances(pool, user.id)
    return PortfolioOut(
        user_id=user.id,
        deposit_address=user.deposit_address,
        balances={asset: format_usdc(balances.get(asset, 0)) for asset in USER_ASSETS},
    )
