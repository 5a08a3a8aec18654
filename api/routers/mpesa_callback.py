"""Safaricom's STK callback webhook.

A 200 means the raw callback is committed in PostgreSQL: the answer is sent only
after the transaction that records and applies it (kiota.callbacks: callbacks that
arrive together share one transaction). The secret token in the path
is compared in constant time and never logged (the access log redacts it). Its body is
capped like every route's (`api.body_limit`), and it is the one route without a per-address limit:
its token and allowlist guard it, and Safaricom's few callback addresses must never be throttled.
Each answer is counted (`kiota_mpesa_callbacks_accepted_total` by disposition, `…_refused_total` by reason)
in the process's tally: no I/O on this path (`kiota.metrics`).
"""

from __future__ import annotations

import hmac
import json

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from api.client_address import scope_client_address
from api.deps import get_resources
from kiota import metrics
from kiota.callbacks import Received, record_malformed
from kiota.errors import CallbackNotRecorded
from kiota.mpesa import MalformedCallback, parse_callback
from kiota.netaddr import allowed

router = APIRouter(tags=["webhooks"])
log = structlog.get_logger(__name__)

ACCEPTED = json.dumps({"ResultCode": 0, "ResultDesc": "Accepted"}, separators=(",", ":")).encode()


def _token_matches(given: str, accepted: list[str]) -> bool:
    match = False
    for token in accepted:  # every token compared, in constant time, whatever matched first
        match |= hmac.compare_digest(given.encode(), token.encode())
    return match


@router.post("/deposit/mpesa-callback/{token}", include_in_schema=False)
async def mpesa_callback(request: Request) -> Response:
    # The busiest route takes the request alone: FastAPI then solves no parameter and no
    # dependency per call (a tenth of the API's CPU per callback under load).
    token: str = request.path_params["token"]
    resources = await get_resources(request)
    settings = resources.settings
    address = scope_client_address(request.scope, resources.trusted_proxies)
    if not _token_matches(token, settings.callback_tokens):
        log.warning("mpesa callback with a wrong token", client=address)
        metrics.tally.count(metrics.CALLBACKS_REFUSED, "wrong_token")
        return JSONResponse({"detail": "not found"}, status_code=404)
    if not allowed(address, resources.callback_allowlist):
        # Once per address: a new Safaricom address shows in the logs, a flood does not fill them.
        if resources.refused_callers.first(str(address)):
            log.warning("mpesa callback refused: address outside the callback allowlist (logged once)", client=address)
        metrics.tally.count(metrics.CALLBACKS_REFUSED, "address_not_allowed")
        return JSONResponse({"detail": "forbidden"}, status_code=403)
    raw = await request.body()  # at most 64 KiB: api.body_limit answered 413 to anything larger
    try:
        callback = parse_callback(raw)
    except MalformedCallback as exc:
        await record_malformed(resources.pool, raw, address, str(exc))
        log.warning("malformed mpesa callback kept for audit", client=address, error=str(exc))
        metrics.tally.count(metrics.CALLBACKS_REFUSED, "malformed")
        return JSONResponse({"ResultCode": 1, "ResultDesc": f"Rejected: {exc}"}, status_code=400)
    # Returns once the callback is committed (with others that arrived with it) and its job
    # enqueued; CallbackNotRecorded (a 503) otherwise.
    try:
        result = await resources.callbacks.submit(Received(callback, raw, address))
    except CallbackNotRecorded:
        metrics.tally.count(metrics.CALLBACKS_REFUSED, "not_recorded")
        raise
    metrics.tally.count(metrics.CALLBACKS_ACCEPTED, result.disposition)
    return Response(ACCEPTED, media_type="application/json")
