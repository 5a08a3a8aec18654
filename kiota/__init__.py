"""Kiota: turns M-Pesa shillings and USDC on Base into a savings portfolio.

`kiota` is the core (domain, money, ledger rules, settings) plus the adapters to
PostgreSQL and the chain; `api` is the HTTP edge and `jobs` the queue edge.
"""
